"""supervisor_image.py: compile the CPL3 supervisor (runtime/supervisor/) into its flat image.

Run when the package is built (setup.py's build_py hook: into the wheel's tree, or into the
source tree for an editable install) and by the test and bench harnesses for the checkout they
use (ensure_in_tree). The tender only loads the result (machine/supervisor.py), checking it
against the SHA-256 written here, so a host that only runs unikernels needs no compiler.

    python3 -m ukvm.toolchain.supervisor_image [DIR]   # build into DIR (default: beside the sources)
"""
from __future__ import annotations

import os
import sys
import tempfile

from ukvm.machine import supervisor as sv
from ukvm.toolchain.build import RUNTIME_CFLAGS, base_cflags, compiler, run_tool

IMAGE_NAME = os.path.basename(sv.IMAGE_PATH)
DIGEST_NAME = os.path.basename(sv.DIGEST_PATH)


def build_image(out_dir: str) -> str:
    """Compile and link the supervisor; write IMAGE_NAME and DIGEST_NAME into out_dir (each
    replaced whole). Returns the image's path. Needs gcc and binutils."""
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sv-build-") as tmp:
        objs = []
        for name in ("entry.S", "supervisor.c"):
            obj = os.path.join(tmp, name.split(".")[0] + ".o")
            run_tool([compiler(), *base_cflags(), *RUNTIME_CFLAGS, "-I", sv.SRC_DIR, "-c",
                      os.path.join(sv.SRC_DIR, name), "-o", obj])
            objs.append(obj)
        elf = os.path.join(tmp, "supervisor.elf")
        run_tool(["ld", "-nostdlib", "-static", "--build-id=none", "-T",
                  os.path.join(sv.SRC_DIR, "supervisor.lds"), "-o", elf, *objs])
        flat = os.path.join(tmp, IMAGE_NAME)
        run_tool(["objcopy", "-O", "binary", elf, flat])
        with open(flat, "rb") as f:
            data = f.read()
        if not data or len(data) > sv.SV_CODE_END - sv.SV_BASE:
            raise sv.SupervisorError(f"supervisor image has a bad size ({len(data)} bytes)")
        digest = os.path.join(tmp, DIGEST_NAME)
        with open(digest, "w") as f:
            f.write(sv.digest_line(data, sv.sources_digest()))
        image = os.path.join(out_dir, IMAGE_NAME)
        os.replace(flat, image)
        os.replace(digest, os.path.join(out_dir, DIGEST_NAME))
    return image


def ensure_in_tree() -> None:
    """Build the image beside the sources unless the one there loads (a checkout under test)."""
    try:
        sv.image()
    except sv.SupervisorError:
        build_image(sv.SRC_DIR)
        sv.image()


if __name__ == "__main__":
    print(build_image(sys.argv[1] if len(sys.argv) > 1 else sv.SRC_DIR))
