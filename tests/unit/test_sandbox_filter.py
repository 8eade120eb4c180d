"""The composed seccomp programs, run through a small classic-BPF interpreter (no kernel involved)
on crafted seccomp_data: each part's needs are allowed, everything else is killed."""
import errno
import os
import socket
import struct
from types import SimpleNamespace

import pytest

from ukvm.kvm import abi
from ukvm.machine.snapshot import capture_needs, clone_needs
from ukvm.modules.block import BlockModule
from ukvm.modules.core import CoreModule
from ukvm.modules.dumpcore import CORE_OPEN_FLAGS, DumpcoreModule
from ukvm.modules.net import NetModule
from ukvm.sandbox.bpf import (AUDIT_ARCH_X86_64, JA, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS,
                              Program, compile_needs)
from ukvm.sandbox.needs import NR, Needs, arg_clear, arg_in, arg_not_in
from ukvm.sandbox.policy import CLONE_THREAD_FLAGS, FIONBIO, interpreter_needs, run_needs, serve_loop_needs

ALLOW, KILL = SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
VCPU, VMFD, KVMFD, TAP, EFD, BLOCK, WAKE, EPOLL, MEMFD = 7, 8, 6, 9, 11, 13, 14, 15, 16
PID = os.getpid()


def run_bpf(program: bytes, nr: int, *args: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """Run a classic BPF seccomp program on struct seccomp_data {nr, arch, ip, args[6]}."""
    args = tuple(a & (2**64 - 1) for a in args) + (0,) * (6 - len(args))
    data = struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0x1000, *args)
    ops = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc, x = 0, 0, 0
    alu = {0x14: lambda a: a - k, 0x24: lambda a: a * k, 0x34: lambda a: a // k}   # SUB, MUL, DIV (K)
    for _ in range(len(ops) + 1):       # jumps only go forward: at most one pass
        code, jt, jf, k = ops[pc]
        if code == 0x20:                # LD W ABS
            assert k % 4 == 0 and k + 4 <= len(data)
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == JA:
            pc += 1 + k
        elif code in (0x15, 0x45, 0x35, 0x25, 0x1D):      # JEQ K, JSET K, JGE K, JGT K (unsigned), JEQ X
            hit = {0x15: acc == k, 0x45: bool(acc & k), 0x35: acc >= k, 0x25: acc > k, 0x1D: acc == x}[code]
            pc += 1 + (jt if hit else jf)
        elif code in alu:               # 32-bit unsigned arithmetic, as the kernel's
            assert code != 0x34 or k != 0
            acc = alu[code](acc) & 0xFFFFFFFF
            pc += 1
        elif code == 0x07:              # TAX
            x = acc
            pc += 1
        elif code == 0x06:              # RET K
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not end")


def fake_vm(modules, **extra):
    return SimpleNamespace(vcpu=SimpleNamespace(fd=VCPU), vmfd=SimpleNamespace(fd=VMFD), kvm=SimpleNamespace(fd=KVMFD),
                           modules=modules, **extra)


class Core(CoreModule):
    """A core module as set up for a VM with NICs and a wake-up eventfd (no KVM needed)."""

    def __init__(self):
        self.stdout_fd, self.wake_fd = 1, WAKE
        self._epoll = SimpleNamespace(fileno=lambda: EPOLL)


class Net(NetModule):
    def __init__(self, ring=False):
        self.devices = {0: SimpleNamespace(fd=TAP)}
        self.ring = SimpleNamespace(efd=EFD) if ring else None


class Block(BlockModule):
    def __init__(self):
        self.devices = {0: SimpleNamespace(fd=BLOCK)}


class Dumpcore(DumpcoreModule):
    def __init__(self, dirfd):
        self.dirfd = dirfd


@pytest.fixture(scope="module")
def run_prog():
    """`ukvm run` with a NIC (ring on) and a disk."""
    return compile_needs(run_needs(fake_vm([Core(), Block(), Net(ring=True)])))


@pytest.mark.parametrize("name,args", [
    ("ioctl", (VCPU, abi.KVM_RUN)), ("ioctl", (VCPU, abi.KVM_GET_REGS)),
    ("write", (1,)), ("write", (2,)), ("write", (TAP,)), ("readv", (TAP,)), ("read", (EFD,)), ("write", (WAKE,)),
    ("read", (WAKE,)), ("preadv2", (BLOCK,)), ("pwritev2", (BLOCK,)), ("fsync", (BLOCK,)),
    ("epoll_wait", (EPOLL,)), ("pselect6", ()), ("clock_nanosleep", ()),
    ("mmap", (0, 4096, 3)), ("mmap", (0, 4096, 0)), ("tgkill", (PID, 1234, 10)), ("futex", ()), ("close", (99,)),
    ("exit_group", (0,)), ("rt_sigreturn", ()),
])
def test_run_allows_what_its_parts_declare(run_prog, name, args):
    assert run_bpf(run_prog, NR[name], *args) == ALLOW


@pytest.mark.parametrize("name,args", [
    ("open", ()), ("openat", (-100, 0, 0)), ("openat2", ()), ("execve", ()), ("clone", (CLONE_THREAD_FLAGS,)),
    ("clone3", ()), ("fork", ()), ("socket", (socket.AF_INET, socket.SOCK_STREAM)), ("mprotect", (0, 4096, 1)),
    ("kill", (1, 9)), ("ptrace", None), ("memfd_create", (0, 1)), ("renameat", ()), ("unlinkat", ()),
    ("ioctl", (VCPU, abi.KVM_SET_REGS)), ("ioctl", (VCPU + 100, abi.KVM_RUN)), ("ioctl", (VMFD, abi.KVM_RUN)),
    ("ioctl", (VCPU, abi.KVM_SET_USER_MEMORY_REGION)), ("ioctl", (VMFD, abi.KVM_GET_DIRTY_LOG)),
    ("ioctl", (TAP, FIONBIO)), ("ioctl", (VCPU, abi.KVM_GET_SREGS)),
    ("write", (BLOCK,)), ("write", (0,)), ("read", (0,)), ("readv", (BLOCK,)), ("epoll_wait", (EPOLL + 1,)),
    ("pwritev2", (TAP,)), ("preadv2", (1,)), ("pwrite64", (BLOCK,)), ("pread64", (MEMFD,)),
    ("mmap", (0, 4096, 7)), ("mmap", (0, 4096, 4)),         # executable memory
    ("tgkill", (1, 1, 9)), ("tgkill", (PID + 1, 1, 9)),      # another process's threads (init, a neighbour)
    ("recvfrom", (TAP,)), ("sendto", (TAP,)), ("accept4", ()), ("sched_setaffinity", (0,)),
])
def test_run_kills_the_rest(run_prog, name, args):
    nr = NR.get(name, 101)   # ptrace (101) is in no table
    assert run_bpf(run_prog, nr, *(args or ())) == KILL


@pytest.mark.parametrize("nr", [1000, 0x40000000 | 1, -1])     # unknown, x32 ABI write, invalid
def test_unknown_numbers_are_killed(run_prog, nr):
    assert run_bpf(run_prog, nr, 1) == KILL


def test_foreign_architecture_is_killed(run_prog):
    assert run_bpf(run_prog, NR["write"], 1, arch=0x40000003) == KILL     # i386
    assert run_bpf(run_prog, NR["write"], 1) == ALLOW


def test_high_bits_of_an_argument_are_not_looked_at_but_low_bits_are(run_prog):
    # The kernel truncates an fd to 32 bits, so must the filter; (1 << 32) | 5 is fd 5.
    assert run_bpf(run_prog, NR["write"], (1 << 32) | 5) == KILL
    assert run_bpf(run_prog, NR["write"], (1 << 32) | TAP) == ALLOW


def test_no_ring_no_pselect():
    program = compile_needs(run_needs(fake_vm([Core(), Net(ring=False)])))
    assert run_bpf(program, NR["pselect6"]) == KILL
    assert run_bpf(program, NR["read"], EFD) == KILL
    assert run_bpf(program, NR["readv"], TAP) == ALLOW


DUMPDIR = 20


@pytest.mark.parametrize("name,args,allowed", [
    ("openat", (DUMPDIR, 0, CORE_OPEN_FLAGS), True),             # the core file, in DIR
    ("openat", (DUMPDIR, 0, CORE_OPEN_FLAGS & ~os.O_EXCL), False),
    ("openat", (DUMPDIR, 0, os.O_RDONLY), False),                 # reading a file in DIR
    ("openat", (-100, 0, CORE_OPEN_FLAGS), False),                # AT_FDCWD
    ("openat", (VCPU, 0, CORE_OPEN_FLAGS), False),
    ("pwrite64", (900,), True),                                   # a descriptor made since
    ("pwrite64", (BLOCK,), False), ("pwrite64", (1,), False), ("pwrite64", (DUMPDIR,), False),
    ("ioctl", (VCPU, abi.KVM_GET_SREGS), True), ("ioctl", (VCPU, abi.KVM_SET_SREGS), False),
    ("ioctl", (VCPU, abi.KVM_RUN), True), ("write", (TAP,), True),
])
def test_dumpcore_declares_one_open_and_writes_to_new_files(monkeypatch, name, args, allowed):
    import ukvm.sandbox.needs as needs
    monkeypatch.setattr(needs, "open_fds", lambda: {0, 1, 2, VCPU, TAP, BLOCK, DUMPDIR})
    program = compile_needs(run_needs(fake_vm([Core(), Block(), Net(), Dumpcore(DUMPDIR)])))
    assert run_bpf(program, NR[name], *args) == (ALLOW if allowed else KILL)


def test_without_dumpdir_no_open():
    program = compile_needs(run_needs(fake_vm([Core(), Dumpcore(-1)])))
    assert run_bpf(program, NR["openat"], DUMPDIR, 0, CORE_OPEN_FLAGS) == KILL
    assert run_bpf(program, NR["pwrite64"], 900) == KILL


def test_gdb_declares_its_socket_and_debug_registers():
    pytest.importorskip("ukvm.modules.gdb.stub")
    from ukvm.modules.gdb import GdbModule
    from ukvm.modules.gdb.stub import GdbStub
    stub = GdbStub.__new__(GdbStub)
    stub.sock = SimpleNamespace(fileno=lambda: 17)
    stub.sw = None                   # a CPL0 session: no int3 writes through /proc/self/mem
    gdb = GdbModule.__new__(GdbModule)
    gdb.stub = stub
    program = compile_needs(run_needs(fake_vm([Core(), gdb])))
    for name, args, allowed in [("recvfrom", (17,), True), ("sendto", (17,), True), ("recvfrom", (TAP,), False),
                                ("ioctl", (VCPU, abi.KVM_SET_GUEST_DEBUG), True),
                                ("ioctl", (VCPU, abi.KVM_GET_FPU), True), ("ioctl", (VCPU, abi.KVM_SET_REGS), True),
                                ("ioctl", (VCPU, abi.KVM_SET_SREGS), False),
                                ("ioctl", (VCPU + 1, abi.KVM_SET_GUEST_DEBUG), False)]:
        assert run_bpf(program, NR[name], *args) == (ALLOW if allowed else KILL), (name, args)
    plain = compile_needs(run_needs(fake_vm([Core()])))
    assert run_bpf(plain, NR["ioctl"], VCPU, abi.KVM_SET_GUEST_DEBUG) == KILL


def test_clone_machinery_declares_reset():
    vm = fake_vm([Core(), Net()], snapshot_state=SimpleNamespace(mem_fd=MEMFD))
    program = compile_needs(run_needs(vm) | clone_needs(vm))
    for request in (abi.KVM_SET_REGS, abi.KVM_SET_SREGS, abi.KVM_SET_MSRS, abi.KVM_SET_XSAVE, abi.KVM_SET_XCRS):
        assert run_bpf(program, NR["ioctl"], VCPU, request) == ALLOW
        assert run_bpf(program, NR["ioctl"], VCPU + 1, request) == KILL
    assert run_bpf(program, NR["ioctl"], VMFD, abi.KVM_GET_DIRTY_LOG) == ALLOW
    assert run_bpf(program, NR["ioctl"], VCPU, abi.KVM_GET_DIRTY_LOG) == KILL
    assert run_bpf(program, NR["ioctl"], VMFD, abi.KVM_SET_USER_MEMORY_REGION) == KILL
    assert run_bpf(program, NR["pread64"], MEMFD) == KILL      # reset copies from the snapshot's mapping
    assert run_bpf(program, NR["pread64"], TAP) == KILL


def test_capture_allows_a_new_memfd_only(monkeypatch):
    import ukvm.sandbox.needs as needs
    monkeypatch.setattr(needs, "open_fds", lambda: {0, 1, 2, VCPU, VMFD, KVMFD, TAP})
    vm = fake_vm([Core()])
    program = compile_needs(run_needs(vm) | capture_needs(vm))
    assert run_bpf(program, NR["memfd_create"], 0, os.MFD_CLOEXEC) == ALLOW
    assert run_bpf(program, NR["memfd_create"], 0, os.MFD_CLOEXEC | 0x8) == KILL     # MFD_EXEC and co.
    assert run_bpf(program, NR["pwrite64"], 30) == ALLOW and run_bpf(program, NR["pwrite64"], TAP) == KILL
    assert run_bpf(program, NR["ftruncate"], 30) == ALLOW and run_bpf(program, NR["ftruncate"], VCPU) == KILL
    assert run_bpf(program, NR["ioctl"], KVMFD, abi.KVM_CHECK_EXTENSION) == ALLOW
    assert run_bpf(program, NR["ioctl"], KVMFD, abi.KVM_CREATE_VM) == KILL
    assert run_bpf(program, NR["ioctl"], VCPU, abi.KVM_GET_XSAVE) == ALLOW


def test_snapshot_writer_declares_its_file_and_directory(tmp_path):
    from ukvm.machine.snapshot import SnapshotWriter
    writer = SnapshotWriter(str(tmp_path / "snap"))
    try:
        program = compile_needs(interpreter_needs() | writer.sandbox_needs())
        fd, dirfd = writer.fd, writer.dirfd
        assert run_bpf(program, NR["pwrite64"], fd) == ALLOW and run_bpf(program, NR["fsync"], dirfd) == ALLOW
        assert run_bpf(program, NR["renameat"], dirfd, 0, dirfd) == ALLOW
        assert run_bpf(program, NR["renameat"], dirfd, 0, -100) == KILL       # out of the directory
        assert run_bpf(program, NR["renameat"], -100, 0, dirfd) == KILL
        assert run_bpf(program, NR["pwrite64"], fd + 50) == KILL
    finally:
        writer.close()


def test_serve_loop_sockets_and_threads():
    program = compile_needs(interpreter_needs() | serve_loop_needs({EPOLL}, {TAP, EFD}))
    stream = socket.SOCK_STREAM | socket.SOCK_CLOEXEC
    for name, args, expected in [
            ("socket", (socket.AF_INET, stream, 0), ALLOW), ("socket", (socket.AF_INET, socket.SOCK_DGRAM, 0), KILL),
            ("socket", (socket.AF_NETLINK, stream, 0), KILL), ("socket", (socket.AF_PACKET, 3, 0), KILL),
            ("socket", (socket.AF_UNIX, stream, 0), KILL), ("socket", (socket.AF_INET, socket.SOCK_RAW, 6), KILL),
            ("ioctl", (33, FIONBIO), ALLOW), ("ioctl", (33, 0x89F0), KILL),           # SIOCDEVPRIVATE and co.
            ("clone", (CLONE_THREAD_FLAGS,), ALLOW), ("clone", (0x11,), KILL),      # fork: SIGCHLD only
            ("clone", (CLONE_THREAD_FLAGS | 0x20000,), KILL),                        # and a new mount namespace
            ("clone3", (), SECCOMP_RET_ERRNO | errno.ENOSYS), ("fork", (), KILL),
            ("mprotect", (0, 4096, 3), ALLOW), ("mprotect", (0, 4096, 5), KILL),
            ("epoll_wait", (EPOLL,), ALLOW), ("epoll_ctl", (EPOLL + 1,), KILL),
            ("read", (TAP,), ALLOW), ("write", (EFD,), ALLOW), ("write", (BLOCK,), KILL),
            ("sched_setaffinity", (0,), ALLOW), ("sched_setaffinity", (1,), KILL),
            ("openat", (-100, 0, 0), KILL), ("execve", (), KILL), ("setuid", None, KILL)]:
        nr = NR.get(name, 105)     # setuid (105) is in no table
        assert run_bpf(program, nr, *(args or ())) == expected, (name, args)


def test_merged_alternatives_keep_every_declared_pair():
    """Two modules declaring ioctls on different fds: merged into one test where it is safe,
    never allowing a request on an fd that was not declared with it."""
    needs = Needs().ioctl({3}, 10, 11) | Needs().ioctl({4}, 10, 11) | Needs().ioctl({5}, 12)
    program = compile_needs(needs)
    assert {(fd, req) for fd in range(2, 7) for req in range(9, 14)
            if run_bpf(program, NR["ioctl"], fd, req) == ALLOW} == {(3, 10), (3, 11), (4, 10), (4, 11), (5, 12)}


def test_conditions_combine():
    needs = Needs().when("mmap", arg_clear(2, 4), arg_in(3, {0x22})).when("mmap", arg_not_in(4, {7}), arg_in(3, {1}))
    program = compile_needs(needs)
    assert run_bpf(program, NR["mmap"], 0, 0, 3, 0x22) == ALLOW
    assert run_bpf(program, NR["mmap"], 0, 0, 7, 0x22) == KILL
    assert run_bpf(program, NR["mmap"], 0, 0, 7, 1, 8) == ALLOW
    assert run_bpf(program, NR["mmap"], 0, 0, 7, 1, 7) == KILL
    assert run_bpf(program, NR["mmap"], 0, 0, 3, 2) == KILL


def test_large_programs_stay_valid():
    """Many clones: hundreds of fds in one test; the far jumps are JA, so it still assembles."""
    needs = interpreter_needs()
    for fd in range(100, 700):
        needs = needs | Needs().ioctl({fd}, abi.KVM_RUN, abi.KVM_GET_REGS).on_fds("write", {fd + 1000})
    program = compile_needs(needs)
    assert run_bpf(program, NR["ioctl"], 699, abi.KVM_RUN) == ALLOW
    assert run_bpf(program, NR["ioctl"], 700, abi.KVM_RUN) == KILL
    assert run_bpf(program, NR["write"], 1500) == ALLOW and run_bpf(program, NR["write"], 700) == KILL


def test_unknown_names_are_refused_when_declared():
    with pytest.raises(KeyError):
        Needs().allow("no_such_call")


def test_jumps_out_of_range_are_refused():
    p = Program()
    p.op(0x15, 1, "far", 0)
    for _ in range(300):
        p.op(0x06, 0)
    p.label("far")
    p.op(0x06, 0)
    with pytest.raises(ValueError):
        p.assemble()


def clone_fds(i: int) -> dict:
    """Clone i's descriptors laid out as serve makes them: nine apart, with a shift now and then
    (a descriptor the set-up opened in between)."""
    base = 20 + 9 * i + i // 700
    return {"vm": base, "vcpu": base + 1, "wake": base + 3, "epoll": base + 4, "tap": base + 6}


def pool_needs(clones: int) -> Needs:
    parts = [interpreter_needs(), serve_loop_needs({3}, {4, 5})]
    for i in range(clones):
        fds = clone_fds(i)
        core = Core()
        core.wake_fd, core._epoll = fds["wake"], SimpleNamespace(fileno=lambda fd=fds["epoll"]: fd)
        net = Net()
        net.devices = {0: SimpleNamespace(fd=fds["tap"])}
        vm = SimpleNamespace(vcpu=SimpleNamespace(fd=fds["vcpu"]), vmfd=SimpleNamespace(fd=fds["vm"]),
                             kvm=SimpleNamespace(fd=KVMFD), modules=[core, net])
        parts += [run_needs(vm), clone_needs(vm)]
    return Needs.union(parts)


def test_a_pool_of_4096_clones_fits_the_kernels_limit():
    """The filter's size follows the pieces of each fd set (ranges, evenly spaced runs), not the
    number of clones; still exact: every fd inside the runs by kind, nothing between or beyond."""
    clones = 4096
    program = compile_needs(pool_needs(clones))
    assert len(program) // 8 < 1024                      # the kernel takes 4096
    assert len(compile_needs(pool_needs(700))) == len(compile_needs(pool_needs(350)))   # no shift: no growth
    kinds = [clone_fds(i) for i in range(clones)]
    allowed = {"vcpu": {k["vcpu"] for k in kinds}, "vm": {k["vm"] for k in kinds},
               "rw": {k["wake"] for k in kinds} | {k["tap"] for k in kinds},
               "tap": {k["tap"] for k in kinds}, "epoll": {k["epoll"] for k in kinds} | {3}}
    last = clone_fds(clones - 1)["tap"]
    sample = [*range(0, 400), *range(6280, 6340), *range(last - 400, last + 40), 2**31 - 1, 2**32 - 1]
    for fd in sample:
        assert (run_bpf(program, NR["ioctl"], fd, abi.KVM_RUN) == ALLOW) == (fd in allowed["vcpu"]), fd
        assert (run_bpf(program, NR["ioctl"], fd, abi.KVM_SET_REGS) == ALLOW) == (fd in allowed["vcpu"]), fd
        assert (run_bpf(program, NR["ioctl"], fd, abi.KVM_GET_DIRTY_LOG) == ALLOW) == (fd in allowed["vm"]), fd
        assert (run_bpf(program, NR["readv"], fd) == ALLOW) == (fd in allowed["tap"]), fd
        assert (run_bpf(program, NR["read"], fd) == ALLOW) == (fd in allowed["rw"] | {4, 5}), fd
        assert (run_bpf(program, NR["write"], fd) == ALLOW) == (fd in allowed["rw"] | {1, 2, 4, 5}), fd
        assert (run_bpf(program, NR["epoll_wait"], fd) == ALLOW) == (fd in allowed["epoll"]), fd
    assert run_bpf(program, NR["ioctl"], clone_fds(5)["vcpu"], abi.KVM_GET_DIRTY_LOG) == KILL
    assert run_bpf(program, NR["ioctl"], clone_fds(5)["vm"], abi.KVM_RUN) == KILL


@pytest.mark.parametrize("values", [
    {5}, {5, 6}, set(range(10, 20)), set(range(10, 200, 7)), set(range(10, 200, 7)) | set(range(12, 200, 7)) | {3},
    {0, 1, 2, 2**32 - 1, 2**32 - 2}, set(range(100, 2000, 3)) - {400, 1000}, set(range(0, 3000, 2)) | {7, 9},
])
def test_value_sets_compile_exactly(values):
    """Each piece holds its values and nothing else: every value near the set decided alike."""
    program = compile_needs(Needs().on_fds("read", values))
    near = {v + d for v in values for d in (-2, -1, 0, 1, 2)} | {0, 2**31, 2**32 - 1}
    for v in sorted(x & 0xFFFFFFFF for x in near):
        assert (run_bpf(program, NR["read"], v) == ALLOW) == (v in values), v
