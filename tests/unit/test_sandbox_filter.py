"""The seccomp program, run through a small classic-BPF interpreter (no kernel involved)."""
import struct

import pytest

from ukvm.kvm import abi
from ukvm.sandbox import (AUDIT_ARCH_X86_64, CORE_OPEN_FLAGS, NR, SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS, UNFILTERED,
                          build_filter)

VCPU, TAP, EFD, BLOCK = 7, 9, 11, 13


def run_bpf(program: bytes, nr: int, args=(0,) * 6, arch=AUDIT_ARCH_X86_64) -> int:
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    ops = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    for _ in range(10_000):
        code, jt, jf, k = ops[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x45):
            hit = acc == k if code == 0x15 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not end")


@pytest.fixture(scope="module")
def prog():
    return build_filter(VCPU, {TAP, EFD}, {1, 2, TAP, EFD}, {BLOCK})


@pytest.mark.parametrize("name,args", [
    ("ioctl", (VCPU, abi.KVM_RUN)), ("ioctl", (VCPU, abi.KVM_GET_REGS)),
    ("write", (1,)), ("write", (2,)), ("write", (TAP,)), ("readv", (TAP,)), ("read", (EFD,)),
    ("preadv2", (BLOCK,)), ("pwritev2", (BLOCK,)), ("fsync", (BLOCK,)),
    ("mmap", (0, 4096, 3)), *[(n, ()) for n in UNFILTERED],
])
def test_allowed(prog, name, args):
    assert run_bpf(prog, NR[name], tuple(args) + (0,) * (6 - len(args))) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("nr,args", [
    (2, ()), (257, ()), (59, ()), (322, ()), (41, ()), (56, ()), (57, ()), (435, ()), (10, ()),  # open.. mprotect
    (NR["ioctl"], (VCPU, abi.KVM_SET_REGS)), (NR["ioctl"], (VCPU + 1, abi.KVM_RUN)),
    (NR["ioctl"], (VCPU, abi.KVM_SET_USER_MEMORY_REGION)),
    (NR["write"], (BLOCK,)), (NR["write"], (0,)), (NR["read"], (0,)), (NR["readv"], (BLOCK,)),
    (NR["pwritev2"], (TAP,)), (NR["preadv2"], (1,)),
    (NR["mmap"], (0, 4096, 7)),     # executable memory
    (1000, ()),
])
def test_killed(prog, nr, args):
    assert run_bpf(prog, nr, tuple(args) + (0,) * (6 - len(args))) == SECCOMP_RET_KILL_PROCESS


def test_foreign_architecture_is_killed(prog):
    assert run_bpf(prog, NR["write"], (1, 0, 0, 0, 0, 0), arch=0x40000003) == SECCOMP_RET_KILL_PROCESS


def test_fewer_unfiltered_calls_than_upstream():
    assert len(UNFILTERED) < 18


DUMPDIR, OPEN = 15, {0, 1, 2, VCPU, TAP, EFD, BLOCK, 15}


@pytest.fixture(scope="module")
def dump_prog():
    return build_filter(VCPU, {TAP, EFD}, {1, 2, TAP, EFD}, {BLOCK}, dump_dirfd=DUMPDIR, open_fds=OPEN)


@pytest.mark.parametrize("nr,args,allowed", [
    (NR["openat"], (DUMPDIR, 0, CORE_OPEN_FLAGS), True),            # the core file, in DIR
    (NR["openat"], (DUMPDIR, 0, CORE_OPEN_FLAGS & ~0o200), False),  # without O_EXCL
    (NR["openat"], (DUMPDIR, 0, 0), False),                         # reading a file in DIR
    (NR["openat"], (-100 & 0xFFFFFFFF, 0, CORE_OPEN_FLAGS), False),  # AT_FDCWD
    (NR["pwrite64"], (16,), True),                                   # a descriptor made since
    (NR["pwrite64"], (BLOCK,), False), (NR["pwrite64"], (1,), False), (NR["pwrite64"], (DUMPDIR,), False),
    (NR["ioctl"], (VCPU, abi.KVM_GET_SREGS), True), (NR["ioctl"], (VCPU, abi.KVM_SET_SREGS), False),
    (NR["ioctl"], (VCPU, abi.KVM_RUN), True), (NR["write"], (TAP,), True),
])
def test_dumpcore_rules(dump_prog, nr, args, allowed):
    expected = SECCOMP_RET_ALLOW if allowed else SECCOMP_RET_KILL_PROCESS
    assert run_bpf(dump_prog, nr, tuple(args) + (0,) * (6 - len(args))) == expected


def test_without_dumpcore_no_open_no_pwrite(prog):
    assert run_bpf(prog, NR["openat"], (DUMPDIR, 0, CORE_OPEN_FLAGS, 0, 0, 0)) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(prog, NR["pwrite64"], (16, 0, 0, 0, 0, 0)) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(prog, NR["ioctl"], (VCPU, abi.KVM_GET_SREGS, 0, 0, 0, 0)) == SECCOMP_RET_KILL_PROCESS


SOCK = 17


@pytest.mark.parametrize("nr,args,allowed", [
    (NR["recvfrom"], (SOCK,), True), (NR["sendto"], (SOCK,), True),
    (NR["recvfrom"], (TAP,), False), (NR["sendto"], (1,), False),
    (NR["ioctl"], (VCPU, abi.KVM_SET_GUEST_DEBUG), True), (NR["ioctl"], (VCPU, abi.KVM_GET_FPU), True),
    (NR["ioctl"], (VCPU, abi.KVM_SET_REGS), True), (NR["ioctl"], (VCPU, abi.KVM_GET_SREGS), True),
    (NR["ioctl"], (VCPU, abi.KVM_SET_SREGS), False), (NR["ioctl"], (VCPU + 1, abi.KVM_SET_GUEST_DEBUG), False),
    (NR["openat"], (SOCK, 0, CORE_OPEN_FLAGS), False),
])
def test_debugger_rules(nr, args, allowed):
    program = build_filter(VCPU, {TAP, EFD}, {1, 2, TAP, EFD}, {BLOCK}, debugger_fd=SOCK)
    expected = SECCOMP_RET_ALLOW if allowed else SECCOMP_RET_KILL_PROCESS
    assert run_bpf(program, nr, tuple(args) + (0,) * (6 - len(args))) == expected


def test_without_debugger_no_socket_calls(prog):
    assert run_bpf(prog, NR["recvfrom"], (SOCK, 0, 0, 0, 0, 0)) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(prog, NR["ioctl"], (VCPU, abi.KVM_SET_GUEST_DEBUG, 0, 0, 0, 0)) == SECCOMP_RET_KILL_PROCESS
