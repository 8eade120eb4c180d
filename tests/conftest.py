"""Shared fixtures: guest builds (with `ukvm build`) and tender runs (with `ukvm run`)."""
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "tests" / "guests"
RUN_TIMEOUT = 60   # seconds, as upstream's harness
# Subprocesses (`python -m ukvm`) import this checkout too, never another installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


def pytest_sessionstart(session):
    # The checkout under test carries the supervisor image that building the package would give
    # it (setup.py's hook); built here when missing or older than its sources.
    from ukvm.toolchain.supervisor_image import ensure_in_tree
    ensure_in_tree()


def kvm_usable() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


needs_kvm = pytest.mark.skipif(not kvm_usable(), reason="needs a readable and writable /dev/kvm")


def ukvm(*args, timeout=RUN_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    """Run `python -m ukvm ARGS`, stdout and stderr combined (as bats captures them)."""
    return subprocess.run([sys.executable, "-m", "ukvm", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout, **kw)


def run_hvt(*args, **kw) -> subprocess.CompletedProcess:
    """`ukvm run ARGS` with text output."""
    p = ukvm("run", *args, **kw)
    p.output = p.stdout.decode("utf-8", "replace")
    return p


# Guests built with --cpl0 run their code at CPL0, where kvm_pvm cannot execute SSE (docs/pvm.md):
# those are built for general registers only, except the ones whose point is SSE. Guests built
# the default way run at CPL3, where SSE is native.
CPL0_CFLAGS = "-mgeneral-regs-only"
USES_SSE = {"test_fpu"}


ON_PVM = os.path.exists("/sys/module/kvm_pvm")


# The pass criteria of Solo5's own test harness (docs/compatibility.md).
def expect_success(p):
    assert p.returncode == 0, p.output
    assert "SUCCESS" in p.output


def expect_abort(p):
    assert p.returncode == 255, p.output
    assert "ABORT" in p.output


def expect_fpu_result(p, code_at_cpl0: bool) -> None:
    """test_fpu: SUCCESS, except for guest code at CPL0 on kvm_pvm, whose CPL0 emulator has no
    SSE: the first movaps ends the guest (upstream solo5-hvt shows the same; docs/pvm.md)."""
    if ON_PVM and code_at_cpl0:
        assert p.returncode == 1, p.output
        assert "KVM: internal error exit: suberror=0x1" in p.output
    else:
        expect_success(p)


def read_until(proc, marker: bytes, timeout: float = 30, count: int = 1) -> bytes:
    """Read proc.stdout until `marker` was seen `count` times, EOF, or `timeout` seconds."""
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(marker) < count and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
    return buf


class GuestBuilder:
    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.built: dict[str, Path] = {}

    def __call__(self, name: str, manifest: str | None = None, cpl0: bool = True) -> Path:
        """Build tests/guests/NAME.c (with an optional manifest.json text) once per session.

        cpl0=True (the default for device and tender tests) builds with --cpl0; the Solo5 test
        equivalents run in both modes."""
        key = f"{name}:{manifest}:{cpl0}"
        if key not in self.built:
            out = self.outdir / f"{name}-{len(self.built)}.hvt"
            args = ["build", GUESTS / f"{name}.c", "-o", out]
            if cpl0:
                args.append("--cpl0")
                if name not in USES_SSE:
                    args.append(f"--cflags={CPL0_CFLAGS}")
            if manifest is not None:
                mpath = self.outdir / f"{name}-{len(self.built)}.json"
                mpath.write_text(manifest)
                args += ["--manifest", mpath]
            p = ukvm(*args, timeout=120)
            assert p.returncode == 0, p.stdout.decode()
            self.built[key] = out
        return self.built[key]


@pytest.fixture(scope="session")
def guest(tmp_path_factory) -> GuestBuilder:
    return GuestBuilder(tmp_path_factory.mktemp("guests"))
