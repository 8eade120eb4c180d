"""oci/launcher.py: `ukvm oci launcher PATH`: the ukvm-oci executable containerd should run.

The shim runs ukvm-oci for every command of every container (the pod's pause container too), so
its start-up is paid many times per pod. pip's console script starts the interpreter with site
processing (every .pth file's hooks) and with the environment's PYTHON* variables; this launcher
runs this interpreter itself with -I -S (isolated, no site) and puts this ukvm on sys.path, so a
command costs the interpreter's own start-up and the few modules it needs (docs/kubernetes.md).
"""
from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
# ukvm-oci, written by `ukvm oci launcher`: this interpreter, no site hooks, this ukvm.
import sys
sys.path.insert(0, {src!r})
from ukvm.oci.runtime import main
sys.exit(main())
"""


def write_launcher(path: str) -> None:
    import ukvm
    src = os.path.dirname(os.path.dirname(os.path.abspath(ukvm.__file__)))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(TEMPLATE.format(python=os.path.realpath(sys.executable), src=src))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)               # PATH a directory, say: leave nothing beside it
        except OSError:
            pass
        raise
