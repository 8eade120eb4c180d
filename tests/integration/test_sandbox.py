"""The tender runs under its seccomp filter; a forbidden call kills it."""
import os
import signal
import subprocess
import sys

from conftest import needs_kvm, read_until, run_hvt

pytestmark = needs_kvm


def test_opening_a_file_after_set_up_is_fatal(guest, tmp_path):
    (tmp_path / "x").write_text("x")
    p = run_hvt("--mem=8", guest("test_hello"), "Hello_Solo5",
                env={**os.environ, "UKVM_TEST_OPEN_AFTER_SANDBOX": str(tmp_path / "x")})
    assert p.returncode == -signal.SIGSYS, p.output
    assert "Hello, World" not in p.output        # killed at the first PUTS, before writing it


def test_no_sandbox_flag_says_so_and_allows_it(guest, tmp_path):
    (tmp_path / "x").write_text("x")
    p = run_hvt("--x-no-sandbox", "--mem=8", guest("test_hello"), "Hello_Solo5",
                env={**os.environ, "UKVM_TEST_OPEN_AFTER_SANDBOX": str(tmp_path / "x")})
    assert p.returncode == 0 and "SUCCESS" in p.output
    assert "WARNING: --x-no-sandbox: the tender is NOT confined by seccomp" in p.output


def test_filter_is_installed_while_the_guest_runs(guest):
    proc = subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--mem=8", str(guest("test_hostile")), "sleep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc, b"sleeping")
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status["Seccomp"].strip() == "2"               # filter mode
    assert status["NoNewPrivs"].strip() == "1"
    assert proc.returncode == 1 and err == b"ukvm: Exiting on signal 15\n"
