"""SIGINT/SIGTERM are never lost between the run loop's last check and the wait that follows
(machine/signals.py). The race itself is a few microseconds wide; these tests make its outcome
certain instead: the signal is already pending when KVM_RUN or POLL's wait begins, which before
the fix meant a guest that spins or sleeps for an hour was never stopped."""
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import needs_kvm

pytestmark = needs_kvm

PENDING_THEN = textwrap.dedent("""
    import os, sys
    import _signal as signal
    from ukvm import hvt_abi as hvt
    from ukvm.errors import SignalExit
    from ukvm.machine import signals
    from ukvm.machine.vm import VM, Kernel

    def handler(signum, _frame):
        raise SignalExit(signum)

    signal.signal(signal.SIGTERM, handler)
    signals.end_runs_on([signal.SIGTERM])
    kernel = Kernel(sys.argv[1])
    with VM(kernel, [sys.argv[2]], mem=8 << 20, warn=lambda m: None) as vm:
        os.kill(os.getpid(), signal.SIGTERM)          # blocked: it waits, pending
        print("pending", flush=True)
        try:
            if sys.argv[3] == "run":
                vm.run()                              # the guest spins without an exit
            else:                                     # POLL for an hour, called as an exit would
                gpa = vm.mem.limit - 4096
                vm.mem.pack(hvt.hvt_hc_poll, gpa, 3600 * 10**9, 0, 0)
                vm.core.hvt_hc_poll(gpa)
        except SignalExit as e:
            print(f"ended: {e}", flush=True)
""")


@pytest.mark.parametrize("attack,where", [("loop", "run"), ("sleep", "poll")])
def test_a_pending_signal_ends_the_wait(guest, attack, where):
    p = subprocess.run([sys.executable, "-c", PENDING_THEN, str(guest("test_hostile")), attack, where],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "pending\nended: Exiting on signal 15\n", (p.stdout, p.stderr)


def test_a_signal_ends_a_console_write_nobody_reads(guest):
    """The guest's console is a pipe whose reader stopped reading: the tender blocks in write(),
    where SIGTERM must still end it (the signals are unblocked around console writes)."""
    proc = subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--mem=8", str(guest("test_hostile")), "flood"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):                   # the flood (146 KB) fills the pipe (64 KB): blocked
            with open(f"/proc/{proc.pid}/wchan") as f:
                if "pipe" in f.read():
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the tender never blocked writing to its console")
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)         # stdout still unread
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert status == 1
    assert proc.stderr.read() == b"ukvm: Exiting on signal 15\n"
