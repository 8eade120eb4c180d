"""sandbox/bpf.py: compile a Needs into a classic-BPF seccomp program, and install it.

Layout of the program: check the architecture; dispatch on the call number (ioctl first: KVM_RUN
is the call made once per exit; then the others a request makes most, HOT), where a call allowed whatever its arguments returns at once and
one with conditions jumps to its block; anything else is killed. A block tries each alternative
in turn (all its conditions must hold) and kills when none does. A set of values (the fds of
every clone) is tested piece by piece (pieces(): ranges, evenly spaced runs, single values), so
serve's filter grows with the number of pieces, not of clones (docs/security.md). Conditional
jumps only ever land inside their own piece or chunk; far jumps are JA, whose offset is 32 bits,
so the program is valid whatever its size (up to the kernel's 4096 instructions).
"""
from __future__ import annotations

import ctypes
import os
import struct

from ukvm.errors import UkvmError
from ukvm.sandbox.needs import NR, Needs

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS = 38
READ_IMPLIES_EXEC = 0x0400000
NR_SECCOMP = 317
MAX_INSNS = 4096

# Classic BPF opcodes (linux/filter.h): loads, jumps, return.
LD_W_ABS = 0x20
JA = 0x05
JEQ_K = 0x15
JSET_K = 0x45
JGE_K = 0x35
JGT_K = 0x25
JEQ_X = 0x1D
ALU_SUB_K = 0x14
ALU_MUL_K = 0x24
ALU_DIV_K = 0x34
MISC_TAX = 0x07
RET_K = 0x06
# A set of values compiles to pieces (pieces()): a run of consecutive values of at least
# RANGE_MIN costs 3 instructions, an evenly spaced one of at least STRIDED_MIN 9; a single value 1.
RANGE_MIN, STRIDED_MIN, STRIDE_LOOKAHEAD = 3, 10, 8
OFF_NR, OFF_ARCH = 0, 4
# Dispatched first, in this order: the calls a serve request makes most (strace -c: per request
# about 25 ioctl (KVM_RUN), 40 futex, 13 epoll_wait, 12 read, 10 recvfrom, 8 write, 6 sendto).
HOT = ("ioctl", "futex", "epoll_wait", "read", "recvfrom", "write", "readv", "sendto", "epoll_ctl")


def arg_offset(i: int) -> int:
    return 16 + 8 * i     # the low 32 bits of args[i] in struct seccomp_data (little endian)


class Program:
    """A BPF program under construction; jump targets name labels resolved by assemble()."""

    def __init__(self):
        self.ops: list[tuple[int, object, object, object]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: object = 0, jt: object = 0, jf: object = 0) -> None:
        self.ops.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ops)

    def assemble(self) -> bytes:
        if len(self.ops) > MAX_INSNS:
            raise ValueError(f"seccomp program of {len(self.ops)} instructions (the kernel takes {MAX_INSNS})")
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.ops):
            rel = lambda target: self.labels[target] - i - 1 if isinstance(target, str) else target  # noqa: E731
            jt, jf = rel(jt), rel(jf)
            if code == JA:
                k = rel(k)
            if not (0 <= jt < 256 and 0 <= jf < 256 and 0 <= k < 1 << 32):
                raise ValueError("seccomp program jump out of range")
            out += struct.pack("<HBBI", code, jt, jf, k)
        return bytes(out)


def _merge(alternatives: set[tuple]) -> list[tuple]:
    """Fewer, wider alternatives: those that differ only in the values of one "in" test become one
    (KVM_RUN on vCPU 1 + KVM_RUN on vCPU 2 = KVM_RUN on either); exact, never wider than declared.
    Buckets by everything but that test, so thousands of clones merge in linear passes.
    Deterministic order."""
    alts = {tuple(sorted(alt)) for alt in alternatives}
    changed = True
    while changed:
        changed = False
        for pos in range(max((len(alt) for alt in alts), default=0)):
            buckets: dict[tuple, set] = {}
            rest = []
            for alt in alts:
                if pos < len(alt) and alt[pos][1] == "in":
                    key = (alt[:pos], alt[pos][0], alt[pos + 1:])
                    buckets.setdefault(key, set()).update(alt[pos][2])
                else:
                    rest.append(alt)
            merged = {head + ((index, "in", frozenset(values)),) + tail for (head, index, tail), values in buckets.items()}
            if len(merged) + len(rest) < len(alts):
                changed = True
            alts = set(rest) | merged
    return sorted(alts, key=lambda alt: (len(alt), repr([(i, k, sorted(v) if isinstance(v, frozenset) else v)
                                                         for i, k, v in alt])))


def pieces(values) -> list[tuple[int, int, int]]:
    """A set of values as (first, stride, count) pieces: runs of consecutive values (a range: two
    comparisons), evenly spaced runs (every clone's vCPU fd, 9 apart; the TAP and wake-up fds of
    every clone, two interleaved runs: a range and a division each), and single values. Greedy
    from the smallest value left, trying the strides to the next few values left. Exact: a piece
    holds its values and nothing else."""
    ordered = sorted(set(values))
    left = set(ordered)
    out = []
    for i, first in enumerate(ordered):
        if first not in left:
            continue
        strides = [v - first for v in ordered[i + 1:i + 1 + STRIDE_LOOKAHEAD] if v in left]
        best, best_count = 1, 1
        for stride in strides:
            count = 1
            while first + stride * count in left:
                count += 1
            if count > best_count:
                best, best_count = stride, count
        if best_count < (RANGE_MIN if best == 1 else STRIDED_MIN):
            best, best_count = 1, 1
        out.append((first, best, best_count))
        left.difference_update(first + best * k for k in range(best_count))
    return out


def emit_membership(p: Program, offset: int, values, hit: str, miss: str, prefix: str) -> None:
    """Jump to `hit` when the argument at `offset` (loaded in A) is one of `values`, else to
    `miss`; the program's size grows with the number of pieces, not of values. Single values are
    JEQs in chunks, so that every JEQ reaches its trampoline."""
    singles: list[int] = []

    def flush(n: int) -> None:
        for c in range(0, len(singles), 200):
            here = f"{prefix}_s{n}_{c}"
            for v in singles[c:c + 200]:
                p.op(JEQ_K, v, f"{here}_hit", 0)
            p.op(JA, f"{here}_next")
            p.label(f"{here}_hit")
            p.op(JA, hit)
            p.label(f"{here}_next")
        singles.clear()

    for n, (first, stride, count) in enumerate(pieces(values)):
        if count == 1:
            singles.append(first)
            continue
        flush(n)
        last, nxt = first + stride * (count - 1), f"{prefix}_p{n}_next"
        p.op(JGE_K, first, 0, nxt)
        p.op(JGT_K, last, nxt, 0)
        if stride == 1:
            p.op(JA, hit)
            p.label(nxt)
            continue
        # (A - first) is a multiple of stride: (A - first) / stride * stride == (A - first).
        p.op(ALU_SUB_K, first)
        p.op(MISC_TAX)
        p.op(ALU_DIV_K, stride)
        p.op(ALU_MUL_K, stride)
        p.op(JEQ_X, 0, 0, nxt)
        p.op(JA, hit)
        p.label(nxt)
        p.op(LD_W_ABS, offset)          # A was changed; the next piece compares the argument again
    flush(len(values))
    p.op(JA, miss)


def compile_needs(needs: Needs) -> bytes:
    """The seccomp program that allows exactly what `needs` says and kills the process otherwise."""
    p = Program()
    p.op(LD_W_ABS, OFF_ARCH)
    p.op(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    p.op(RET_K, SECCOMP_RET_KILL_PROCESS)
    p.op(LD_W_ABS, OFF_NR)
    names = sorted(set(needs.rules) | set(needs.errors),
                   key=lambda n: (HOT.index(n) if n in HOT else len(HOT), NR[n]))
    blocks = []
    for name in names:
        alternatives = needs.rules.get(name, set())
        p.op(JEQ_K, NR[name], 0, 1)
        if () in alternatives:
            p.op(RET_K, SECCOMP_RET_ALLOW)
        elif alternatives:
            p.op(JA, f"sys_{name}")
            blocks.append((name, _merge(alternatives)))
        else:
            p.op(RET_K, SECCOMP_RET_ERRNO | needs.errors[name])
    p.op(RET_K, SECCOMP_RET_KILL_PROCESS)
    for name, alternatives in blocks:
        p.label(f"sys_{name}")
        for n, alt in enumerate(alternatives):
            fail = f"{name}_{n}_fail"
            for t, (index, kind, value) in enumerate(alt):
                p.op(LD_W_ABS, arg_offset(index))
                ok = f"{name}_{n}_{t}_ok"
                if kind == "in":
                    emit_membership(p, arg_offset(index), value, ok, fail, f"{name}_{n}_{t}")
                elif kind == "not_in":
                    emit_membership(p, arg_offset(index), value, fail, ok, f"{name}_{n}_{t}")
                elif kind == "clear":
                    p.op(JSET_K, value, 0, 1)
                    p.op(JA, fail)
                else:
                    raise ValueError(f"unknown test {kind!r}")
                p.label(ok)
            p.op(RET_K, SECCOMP_RET_ALLOW)
            p.label(fail)
        p.op(RET_K, SECCOMP_RET_KILL_PROCESS)
    return p.assemble()


class SandboxError(UkvmError):
    pass


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.personality.argtypes = [ctypes.c_ulong]
    libc.syscall.restype = ctypes.c_long
    return libc


def install(program: bytes) -> None:
    """Refuse READ_IMPLIES_EXEC, set no_new_privs, install `program` on every thread (TSYNC)."""
    libc = _libc()
    persona = libc.personality(0xFFFFFFFF)
    if persona != -1 and persona & READ_IMPLIES_EXEC:
        raise SandboxError("Cowardly refusing to run with a sys_personality of READ_IMPLIES_EXEC. "
                           "Check your toolchain or unset the personality.")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(program) // 8, ctypes.addressof(insns)))
    rc = libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), fprog)
    if rc != 0:      # > 0: the id of a thread that could not be synchronised
        reason = os.strerror(ctypes.get_errno()) if rc < 0 else f"thread {rc} cannot take the filter"
        raise SandboxError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {reason}")
