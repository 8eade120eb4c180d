"""A guest that attacks the tender: each attack ends with the documented message and status,
never with a Python traceback, a crash or a hang."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import needs_kvm, read_until, run_hvt

pytestmark = needs_kvm
ON_PVM = os.path.exists("/sys/module/kvm_pvm")


@pytest.mark.parametrize("attack,message", [
    ("port", "ukvm: Invalid guest port access: port=0x400"),
    ("portin", "ukvm: Invalid guest port access: port=0x501"),
    ("port16", "ukvm: Invalid guest port access: port=0x501"),
    ("reserved", "ukvm: Invalid guest hypercall: num=0"),
    ("hypercall", "ukvm: Invalid guest hypercall: num=4"),
    ("argptr", "ukvm: Invalid guest access: gpa=0xfffffff0, sz=16"),
    ("dataptr", "ukvm: Invalid guest access: gpa=0xfffffffff000, sz=16"),
    ("overflow", "ukvm: Invalid guest access: gpa=0x200000, sz=18446744073709551615"),
    ("cookie", "ukvm: Invalid guest access: gpa=0xfffffffffffff000, sz=512"),
    ("rodata", "ukvm: Invalid guest access: gpa=0x"),
    ("text", "ukvm: Invalid guest access: gpa=0x"),
    ("hlt", "ukvm: KVM: unhandled exit: exit_reason=0x5, rip=0x"),
])
def test_attack_is_fatal_with_message(guest, attack, message):
    p = run_hvt("--mem=8", guest("test_hostile"), attack)
    assert p.returncode == 1, p.output
    assert message in p.output
    assert "Traceback" not in p.output and "FAILURE" not in p.output


@pytest.mark.parametrize("attack,cr2", [("bootinfo", "0x10000"), ("pagetable", "0x2000")])
def test_writes_to_boot_info_and_page_tables_fault_in_the_guest(guest, attack, cr2):
    p = run_hvt("--mem=8", guest("test_hostile"), attack)
    assert p.returncode == 255, p.output
    assert f"Solo5: trap: cr2={cr2}\n" in p.output and "ABORT" in p.output


def test_triple_fault(guest):
    p = run_hvt("--mem=8", guest("test_hostile"), "triple")
    assert p.returncode == 1, p.output
    if ON_PVM:
        # kvm_pvm's instruction emulator gives up on the fault cascade instead of a shutdown exit.
        assert "KVM: internal error exit: suberror=0x1" in p.output
    else:
        assert "KVM: unhandled exit: exit_reason=0x8, rip=0x" in p.output


def test_console_flood_is_delivered_completely(guest):
    p = run_hvt("--mem=8", guest("test_hostile"), "flood")
    assert p.returncode == 7
    assert p.output.count("flood flood flood flood flood flood flood flood flood flood flood flood\n") == 2000


@pytest.mark.parametrize("attack,signum", [("loop", signal.SIGTERM), ("sleep", signal.SIGINT),
                                           ("loop", signal.SIGINT)])
def test_signals_end_the_guest(guest, attack, signum):
    proc = subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--mem=8", str(guest("test_hostile")), attack],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc, b"ing\n")
        assert b"ing\n" in seen, seen
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err.decode() == f"ukvm: Exiting on signal {int(signum)}\n"
