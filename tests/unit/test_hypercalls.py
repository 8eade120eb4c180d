"""Core hypercall handlers against plain guest memory, and exit dispatch on fabricated exits."""
import os
import struct
import time

import pytest

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault, GuestMemoryError
from ukvm.machine.exits import HypercallTable, handle_exit
from ukvm.kvm import abi
from ukvm.machine.manifest import Manifest
from ukvm.machine.memory import PROT_READ, GuestMemory
from ukvm.modules.core import CoreModule
from elfgen import manifest_payload

MIB = 1 << 20


class FakeVM:
    def __init__(self, mem):
        self.mem = mem
        self.hypercalls = HypercallTable()


@pytest.fixture
def core():
    mem = GuestMemory(4 * MIB)
    mem.protect(0x300000, 0x301000, PROT_READ)
    module = CoreModule(Manifest.parse(manifest_payload(), "t"))
    vm = FakeVM(mem)
    module.setup(vm)
    r, w = os.pipe()
    module.stdout_fd = w
    module.pipe = r
    yield module
    os.close(r)
    os.close(w)
    module.close()
    mem.close()


def test_walltime(core):
    before = time.time_ns()
    core.hvt_hc_walltime(0x200000)
    got = struct.unpack("<Q", core.mem.host_read(0x200000, 8))[0]
    assert before <= got <= time.time_ns()


def test_puts_writes_bytes_verbatim(core):
    core.mem.host_write(0x200100, b"hi\0there\n")
    core.mem.host_write(0x200000, struct.pack("<QQ", 0x200100, 9))
    core.hvt_hc_puts(0x200000)
    assert os.read(core.pipe, 100) == b"hi\0there\n"


@pytest.mark.parametrize("data,length", [
    (4 * MIB, 0),                 # zero length still needs gpa < M
    (4 * MIB - 4, 5),             # ends past M
    (0x200000, 2**64 - 1),        # wraps past 2^64
    (2**64 - 1, 2),
])
def test_puts_rejects_bad_buffers(core, data, length):
    core.mem.host_write(0x200000, struct.pack("<QQ", data, length))
    with pytest.raises(GuestMemoryError) as e:
        core.hvt_hc_puts(0x200000)
    assert str(e.value) == f"Invalid guest access: gpa={data:#x}, sz={length}"


def test_puts_accepts_buffer_ending_at_top(core):
    core.mem.host_write(4 * MIB - 2, b"ok")
    core.mem.host_write(0x200000, struct.pack("<QQ", 4 * MIB - 2, 2))
    core.hvt_hc_puts(0x200000)
    assert os.read(core.pipe, 10) == b"ok"


@pytest.mark.parametrize("gpa", [4 * MIB - 8, 4 * MIB, 2**32 - 1])
def test_argument_struct_must_fit(core, gpa):
    with pytest.raises(GuestMemoryError):
        core.hvt_hc_puts(gpa)


def test_out_fields_never_written_to_host_readonly_pages(core):
    with pytest.raises(GuestMemoryError, match="gpa=0x300000, sz=8"):
        core.hvt_hc_walltime(0x300000)
    core.mem.host_write(0x2ffff8, bytes(8))   # timeout 0, just below the read-only page
    with pytest.raises(GuestMemoryError):
        core.hvt_hc_poll(0x2ffff8)                                   # its OUT fields are read-only


def test_poll_without_devices_sleeps_for_the_timeout(core):
    core.mem.host_write(0x200000, struct.pack("<QQi", 50_000_000, 99, 99))
    t0 = time.monotonic()
    core.hvt_hc_poll(0x200000)
    assert time.monotonic() - t0 >= 0.05
    assert struct.unpack("<Qi", core.mem.host_read(0x200008, 12)) == (0, 0)


def test_poll_reports_ready_handles(core):
    r, w = os.pipe()
    try:
        core.add_pollfd(r, 3)
        os.write(w, b"x")
        core.mem.host_write(0x200000, struct.pack("<Q", 10**9))
        core.hvt_hc_poll(0x200000)
        assert struct.unpack("<Qi", core.mem.host_read(0x200008, 12)) == (1 << 3, 1)
        os.read(r, 1)
        core.mem.host_write(0x200000, struct.pack("<Q", 0))
        core.hvt_hc_poll(0x200000)
        assert struct.unpack("<Qi", core.mem.host_read(0x200008, 12)) == (0, 0)
    finally:
        os.close(r)
        os.close(w)


# --- exit dispatch ---------------------------------------------------------------------------
def io_exit(port, gpa=0x1234, direction=1, size=4):
    run = bytearray(4096)
    struct.pack_into("<I", run, 8, abi.KVM_EXIT_IO)
    abi.KVM_RUN_IO.pack_into(run, 32, direction, size, port, 1, 2048)
    struct.pack_into("<I", run, 2048, gpa)
    return run


def exit_of(reason, payload_fmt=None, *values):
    run = bytearray(4096)
    struct.pack_into("<I", run, 8, reason)
    if payload_fmt:
        struct.pack_into(payload_fmt, run, 32, *values)
    return run


def dispatch(run, table=None, readonly=()):
    return handle_exit(run, table or HypercallTable(), lambda: 0x100abc, lambda gpa: gpa in readonly)


def test_hypercall_dispatch_calls_handler():
    table = HypercallTable()
    calls = []
    table.register(hvt.HVT_HYPERCALL_PUTS, calls.append)
    assert dispatch(io_exit(0x502, 0xbeef), table) is None
    assert calls == [0xbeef]


def test_register_refuses_duplicates_and_halt():
    table = HypercallTable()
    table.register(1, print)
    with pytest.raises(ValueError):
        table.register(1, print)
    with pytest.raises(ValueError):
        table.register(hvt.HVT_HYPERCALL_HALT, print)


def test_halt_returns_argument_gpa():
    assert dispatch(io_exit(0x508, 0x4000)) == 0x4000


@pytest.mark.parametrize("run,message", [
    (io_exit(0x400), "Invalid guest port access: port=0x400"),
    (io_exit(0x509), "Invalid guest port access: port=0x509"),
    (io_exit(0x600), "Invalid guest port access: port=0x600"),
    (io_exit(0x501, direction=0), "Invalid guest port access: port=0x501"),
    (io_exit(0x501, size=2), "Invalid guest port access: port=0x501"),
    (io_exit(0x500), "Invalid guest hypercall: num=0"),
    (io_exit(0x504), "Invalid guest hypercall: num=4"),
    (exit_of(abi.KVM_EXIT_SHUTDOWN), "KVM: unhandled exit: exit_reason=0x8, rip=0x100abc"),
    (exit_of(abi.KVM_EXIT_HLT), "KVM: unhandled exit: exit_reason=0x5, rip=0x100abc"),
    (exit_of(abi.KVM_EXIT_FAIL_ENTRY, "<Q", 0x80000021), "KVM: entry failure: hw_entry_failure_reason=0x80000021"),
    (exit_of(abi.KVM_EXIT_INTERNAL_ERROR, "<I", 1), "KVM: internal error exit: suberror=0x1"),
    (exit_of(abi.KVM_EXIT_MMIO, "<Q8sIB", 0x500000, bytes(8), 4, 1), "KVM: unhandled exit: exit_reason=0x6, rip=0x100abc"),
    (exit_of(abi.KVM_EXIT_MMIO, "<Q8sIB", 0x101000, bytes(8), 8, 1), "KVM: host/guest translation fault: rip=0x100abc"),
    (exit_of(abi.KVM_EXIT_MMIO, "<Q8sIB", 0x101000, bytes(8), 8, 0), "KVM: unhandled exit: exit_reason=0x6, rip=0x100abc"),
])
def test_fatal_exits(run, message):
    with pytest.raises(GuestFault) as e:
        dispatch(run, readonly=(0x101000,))
    assert str(e.value) == message
