"""setup.py: the build hook; everything else about the package is in pyproject.toml.

build_py also compiles the CPL3 supervisor into its flat image and records its SHA-256
(ukvm.toolchain.supervisor_image): into the build tree for a wheel, beside the sources for an
editable install (`pip install -e .`), so both carry it and running a guest needs no compiler.
Building the package therefore needs gcc and binutils, as `ukvm build` does.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR_FILES = ("supervisor.bin", "supervisor.sha256")


class BuildPyWithSupervisor(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, os.path.join(HERE, "src"))
        try:
            from ukvm.toolchain.supervisor_image import build_image
        finally:
            sys.path.pop(0)
        build_image(self._supervisor_dir())

    def _supervisor_dir(self) -> str:
        if self.editable_mode:
            return os.path.join(HERE, "src", "ukvm", "runtime", "supervisor")
        return os.path.join(self.build_lib, "ukvm", "runtime", "supervisor")

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:          # written in place, beside the sources the .pth points at
            return outputs
        return [*outputs, *(os.path.join(self._supervisor_dir(), name) for name in SUPERVISOR_FILES)]


setup(cmdclass={"build_py": BuildPyWithSupervisor})
