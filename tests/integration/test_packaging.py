"""The supervisor ships built: a wheel carries its flat image and hash, an installed copy runs a
Solo5-built guest under it with no compiler on PATH, imports nothing of the toolchain to do so,
and refuses a missing or altered image with one line."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_kvm
from solo5_sdk import UPSTREAM

HELLO = UPSTREAM / "tests" / "test_hello.hvt"
GENERATED = {"build", "__pycache__", ".pytest_cache", ".hypothesis", ".git", "supervisor.bin", "supervisor.sha256"}


def fresh_copy(dest: Path) -> Path:
    """The checkout as a fresh clone has it: no build tree, no generated supervisor image."""
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in GENERATED
                                                          or n.endswith((".egg-info", ".hvt", ".o"))])
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """ukvm built as a wheel from a fresh copy (pip wheel) and installed into a --target dir."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = fresh_copy(tmp / "src")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    p = subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp / "dist", src], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    wheel, = (tmp / "dist").glob("ukvm-*.whl")
    p = subprocess.run([*pip, "install", "--root-user-action=ignore", "--no-deps", "--target", tmp / "site", wheel],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return tmp / "site"


def run_installed(site: Path, tmp_path: Path, *args, python_flags=()) -> subprocess.CompletedProcess:
    """`python -S -m ukvm run ARGS` from the installed copy only (no site-packages, so no other
    installed ukvm), with a PATH that has no gcc."""
    bin_dir = tmp_path / "bin-without-gcc"
    bin_dir.mkdir(exist_ok=True)
    env = {"PATH": str(bin_dir), "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-S", *python_flags, "-m", "ukvm", "run", *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)


def supervisor_dir(site: Path) -> Path:
    return site / "ukvm" / "runtime" / "supervisor"


def test_wheel_carries_the_image_and_its_hash(installed):
    names = {p.name for p in supervisor_dir(installed).iterdir()}
    assert {"supervisor.bin", "supervisor.sha256"} <= names


@needs_kvm
@pytest.mark.skipif(not HELLO.exists(), reason=f"needs Solo5's test_hello.hvt in {UPSTREAM}")
def test_installed_wheel_runs_a_solo5_guest_under_the_supervisor_without_gcc(installed, tmp_path):
    assert shutil.which("gcc", path=str(tmp_path / "bin-without-gcc")) is None
    p = run_installed(installed, tmp_path, "--x-guest-cpl=3", "--mem=8", HELLO, "Hi", python_flags=["-X", "importtime"])
    assert p.returncode == 0, p.stderr
    assert "Hello, World\nCommand line is: 'Hi'\n" in p.stdout
    imported = [line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")]
    assert "ukvm.machine.supervisor" in imported
    assert not [m for m in imported if m.startswith("ukvm.toolchain")]
    # ... and the copy it imported is the installed one.
    where = subprocess.run([sys.executable, "-S", "-c", "import ukvm; print(ukvm.__file__)"],
                           env={"PYTHONPATH": str(installed)}, cwd=tmp_path, capture_output=True, text=True).stdout
    assert where.startswith(str(installed))


@needs_kvm
@pytest.mark.skipif(not HELLO.exists(), reason=f"needs Solo5's test_hello.hvt in {UPSTREAM}")
@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_damaged_image_is_refused_with_one_line(installed, tmp_path, damage):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    image = supervisor_dir(site) / "supervisor.bin"
    if damage == "tampered":
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0x01
        image.write_bytes(bytes(data))
    else:
        image.unlink()
    p = run_installed(site, tmp_path, "--x-guest-cpl=3", "--mem=8", HELLO, "Hi")
    assert p.returncode == 1
    assert p.stdout == ""
    expected = {"tampered": f"ukvm: the CPL3 supervisor image {image} does not match the hash recorded when ukvm "
                            "was built: refusing to load it (reinstall ukvm, or run with --x-guest-cpl=0)\n",
                "missing": f"ukvm: the CPL3 supervisor image {image} is missing: this copy of ukvm was not built "
                           "(pip install ., or pip install -e . in a checkout); or run with --x-guest-cpl=0\n"}
    assert p.stderr == expected[damage]
