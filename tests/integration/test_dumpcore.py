"""--dumpcore=DIR: core files of aborting, trapping and failing guests that real gdb opens."""
import re
import shutil
import subprocess

import pytest

import solo5_sdk
from conftest import needs_kvm, run_hvt

pytestmark = [needs_kvm, pytest.mark.skipif(shutil.which("gdb") is None,
                                            reason="needs gdb (scripts/test.sh installs it)")]
CORE_LINE = re.compile(r"^ukvm: dumpcore: dumping guest core to: (\S*core\.solo5-hvt\.[0-9]+)$", re.M)


def dumped(p, tmp_path):
    """The core file the run announced (upstream's check: a line ending in its name, in DIR)."""
    m = CORE_LINE.search(p.output)
    assert m, p.output
    core = m[1]
    assert core.startswith(str(tmp_path)) and (tmp_path / core.rsplit("/", 1)[1]).stat().st_size > 0
    assert re.search(r"^ukvm: dumpcore: dumped \d+ pages of total \d+ pages$", p.output, re.M)
    return core


def gdb(kernel, core, *commands):
    args = ["gdb", "-batch", "-nx"] + [a for c in commands for a in ("-ex", c)] + [str(kernel), core]
    return subprocess.run(args, capture_output=True, text=True, timeout=60).stdout


def test_aborting_guest(guest, tmp_path):
    kernel = guest("test_abort", cpl0=False)
    p = run_hvt("--mem=16", f"--dumpcore={tmp_path}", kernel)
    assert p.returncode == 255
    out = gdb(kernel, dumped(p, tmp_path), "info registers rip", "bt")
    assert re.search(r"^rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <solo5_abort\+\d+>", out, re.M), out
    assert re.search(r"in solo5_app_main .* at \S*tests/guests/test_abort.c:\d+", out), out


@pytest.mark.parametrize("cpl0", [False, True], ids=["cpl3", "cpl0"])
def test_trapping_guest_shows_the_faulting_line(guest, tmp_path, cpl0):
    kernel = guest("test_exception", cpl0=cpl0)
    p = run_hvt("--mem=16", f"--dumpcore={tmp_path}", kernel)
    assert p.returncode == 255
    out = gdb(kernel, dumped(p, tmp_path), "info registers rip", "bt")
    # The trap frame the guest passed with its abort puts RIP on the faulting store.
    assert "<solo5_app_main+" in out and re.search(r"#0 .* solo5_app_main .* at \S*tests/guests/test_exception.c:8", out), out


def test_guest_ended_by_a_tender_error(guest, tmp_path):
    kernel = guest("test_xnow", cpl0=False)
    p = run_hvt("--mem=16", f"--dumpcore={tmp_path}", kernel)
    assert p.returncode == 1 and "host/guest translation fault" in p.output
    out = gdb(kernel, dumped(p, tmp_path), "bt")
    assert re.search(r"#0 .* solo5_app_main .* at \S*tests/guests/test_xnow.c:\d+", out), out


def test_no_core_for_a_normal_exit(guest, tmp_path):
    p = run_hvt("--mem=16", f"--dumpcore={tmp_path}", guest("test_hello", cpl0=False), "Hello_Solo5")
    assert p.returncode == 0 and "dumpcore" not in p.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("directory,message", [
    ("/nonexistent/cores", "ukvm: dumpcore: cannot open dir: /nonexistent/cores: No such file or directory"),
    ("/dev/null", "ukvm: dumpcore: cannot open dir: /dev/null: Not a directory"),
    ("/proc/self", "ukvm: dumpcore: dir not writable: /proc/self"),
])
def test_bad_directory_is_one_line(guest, directory, message):
    p = run_hvt("--mem=16", f"--dumpcore={directory}", guest("test_abort", cpl0=False))
    assert p.returncode == 1
    assert p.output.strip() == message


@pytest.mark.skipif(not solo5_sdk.available(), reason=solo5_sdk.MISSING)
@pytest.mark.parametrize("cpl", ["3", "0"])
def test_upstream_test_dumpcore(tmp_path, cpl):
    # Upstream's check: status 255, and the file named by the output exists in DIR.
    kernel = solo5_sdk.UPSTREAM / "tests" / "test_dumpcore.hvt"
    p = run_hvt(f"--x-guest-cpl={cpl}", f"--dumpcore={tmp_path}", kernel)
    assert p.returncode == 255
    out = gdb(kernel, dumped(p, tmp_path), "bt")
    assert "in solo5_abort ()" in out and "in solo5_app_main ()" in out, out
