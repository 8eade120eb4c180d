"""The library API: one process creates, runs and tears down many VMs, leaking nothing."""
import os

import pytest

from conftest import needs_kvm
from ukvm.errors import GuestFault, UsageError
from ukvm.machine.vm import VM, Kernel

pytestmark = needs_kvm


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_many_vms_one_process(guest, capfd):
    kernel = Kernel(str(guest("test_hello")))
    try:
        def boot_once():
            with VM(kernel, ["Hello_Solo5"], mem=8 << 20, warn=lambda m: None) as vm:
                assert vm.run() == 0
        boot_once()   # warm up imports and caches before counting
        fds, maps = open_fds(), mappings()
        for _ in range(30):
            boot_once()
        assert open_fds() == fds
        assert mappings() <= maps + 2     # allocator noise, not one mapping per VM
    finally:
        kernel.close()
    out = capfd.readouterr().out
    assert out.count("SUCCESS") == 31


def test_failed_vm_releases_everything(guest):
    kernel = Kernel(str(guest("test_hello")))
    try:
        fds = open_fds()
        with pytest.raises(UsageError, match="Guest command line too long"):
            VM(kernel, ["x" * 9000], mem=8 << 20)
        assert open_fds() == fds
    finally:
        kernel.close()


def test_fatal_guest_exit_is_an_exception(guest):
    kernel = Kernel(str(guest("test_hostile")))
    try:
        with VM(kernel, ["port"], mem=8 << 20) as vm:
            with pytest.raises(GuestFault, match="Invalid guest port access: port=0x400"):
                vm.run()
    finally:
        kernel.close()
