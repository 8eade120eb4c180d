"""sandbox: confine the tender with seccomp before the guest runs (docs/security.md).

The filter is a classic BPF program written here (no libseccomp). It is installed on all
threads (TSYNC, so the ring I/O thread is covered) after every fd, thread and epoll set exists
and before the first KVM_RUN. Anything not listed kills the whole process (SIGSYS): no open,
exec, socket, fork, mprotect or executable mmap. Where an argument says what a call touches, it
is filtered: the fd of reads and writes, the fd and request of ioctl, PROT_EXEC for mmap.

May import: ukvm.errors and ukvm.kvm only: every other layer declares its needs to it.
"""
import ctypes
import os
import struct

from ukvm.errors import UkvmError
from ukvm.kvm import abi

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS = 38
READ_IMPLIES_EXEC = 0x0400000
PROT_EXEC = 0x4
NR_SECCOMP = 317

# x86_64 system call numbers
NR = {"read": 0, "write": 1, "close": 3, "mmap": 9, "munmap": 11, "brk": 12, "rt_sigaction": 13,
      "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16, "readv": 19, "madvise": 28, "getpid": 39,
      "exit": 60, "fsync": 74, "futex": 202, "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232,
      "tgkill": 234, "pselect6": 270, "preadv2": 327, "pwritev2": 328, "pwrite64": 18, "openat": 257,
      "sendto": 44, "recvfrom": 45}
# --dumpcore: the only open the sandbox allows (modules/dumpcore.py creates the core this way).
CORE_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

# Allowed without argument checks, and why (docs/security.md has the full table).
UNFILTERED = [
    "futex",            # the GIL and thread joins
    "munmap", "brk", "madvise",   # the interpreter's allocator; guest memory teardown
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",   # SIGINT/SIGTERM/SIGUSR1 handling
    "getpid", "tgkill",  # ring thread stopping the vCPU thread (pthread_kill)
    "pselect6",          # ring thread: bounded wait on its eventfd
    "epoll_wait",        # POLL on the NICs
    "clock_nanosleep",   # POLL without NICs (a plain sleep)
    "close",             # teardown
    "exit", "exit_group",
]

# BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JSET_K = 0x45
RET_K = 0x06
OFF_NR = 0
OFF_ARCH = 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i     # low 32 bits of args[i] in struct seccomp_data


class _Program:
    """A BPF program under construction; jumps name labels resolved at the end."""

    def __init__(self):
        self.ops: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code, k, jt=0, jf=0):
        self.ops.append((code, jt, jf, k))

    def label(self, name):
        self.labels[name] = len(self.ops)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.ops):
            rel = [self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if not all(0 <= r < 256 for r in rel):
                raise ValueError("seccomp program jump out of range")
            out += struct.pack("<HBBI", code, rel[0], rel[1], k & 0xFFFFFFFF)
        return bytes(out)


def build_filter(vcpu_fd: int, read_fds: set[int], write_fds: set[int], block_fds: set[int],
                 dump_dirfd: int | None = None, open_fds: set[int] = frozenset(),
                 debugger_fd: int | None = None) -> bytes:
    """The filter for a tender whose descriptors are known; see the module docstring.

    With `dump_dirfd` (--dumpcore), also: openat in that directory with exactly the core file's
    flags; pwrite64 to descriptors that were not open when the filter was built (only that
    openat can have made them); KVM_GET_SREGS on the vCPU (the registers for the core).
    With `debugger_fd` (--gdb): sendto/recvfrom on that socket, and the vCPU ioctls a debugger
    needs (registers, FPU state, guest debug)."""
    p = _Program()
    p.op(LD_W_ABS, OFF_ARCH)
    p.op(JEQ_K, AUDIT_ARCH_X86_64, 0, "kill")
    p.op(LD_W_ABS, OFF_NR)
    p.op(JEQ_K, NR["ioctl"], "ioctl", 0)        # first: KVM_RUN is the call made once per exit
    for name in UNFILTERED:
        p.op(JEQ_K, NR[name], "allow", 0)

    def fd_rule(syscalls: list[str], fds: set[int], label: str):
        for name in syscalls:
            p.op(JEQ_K, NR[name], label, 0)
        return label, fds

    rules = [fd_rule(["read", "readv"], read_fds, "fd_read"),
             fd_rule(["write"], write_fds, "fd_write"),
             fd_rule(["preadv2", "pwritev2", "fsync"], block_fds, "fd_block")]
    if debugger_fd is not None:
        rules.append(fd_rule(["sendto", "recvfrom"], {debugger_fd}, "fd_debugger"))
    if dump_dirfd is not None:
        p.op(JEQ_K, NR["openat"], "core_open", 0)
        p.op(JEQ_K, NR["pwrite64"], "core_write", 0)
    p.op(JEQ_K, NR["mmap"], "mmap", "kill")
    if dump_dirfd is not None:
        p.label("core_open")
        p.op(LD_W_ABS, _arg_lo(0))
        p.op(JEQ_K, dump_dirfd, 0, "kill")
        p.op(LD_W_ABS, _arg_lo(2))
        p.op(JEQ_K, CORE_OPEN_FLAGS, "allow", "kill")
        p.label("core_write")
        p.op(LD_W_ABS, _arg_lo(0))
        for fd in sorted(open_fds):
            p.op(JEQ_K, fd, "kill", 0)
        p.op(RET_K, SECCOMP_RET_ALLOW)
    for label, fds in rules:
        p.label(label)
        p.op(LD_W_ABS, _arg_lo(0))
        for fd in sorted(fds):
            p.op(JEQ_K, fd, "allow", 0)
        p.op(RET_K, SECCOMP_RET_KILL_PROCESS)
    p.label("ioctl")            # only KVM_RUN and KVM_GET_REGS (error reports), on the vCPU
    p.op(LD_W_ABS, _arg_lo(0))
    p.op(JEQ_K, vcpu_fd, 0, "kill")
    p.op(LD_W_ABS, _arg_lo(1))
    p.op(JEQ_K, abi.KVM_RUN, "allow", 0)
    if dump_dirfd is not None or debugger_fd is not None:
        p.op(JEQ_K, abi.KVM_GET_SREGS, "allow", 0)
    if debugger_fd is not None:
        for request in (abi.KVM_SET_REGS, abi.KVM_GET_FPU, abi.KVM_SET_GUEST_DEBUG):
            p.op(JEQ_K, request, "allow", 0)
    p.op(JEQ_K, abi.KVM_GET_REGS, "allow", "kill")
    p.label("mmap")             # memory for the interpreter, never executable
    p.op(LD_W_ABS, _arg_lo(2))
    p.op(JSET_K, PROT_EXEC, "kill", "allow")
    p.label("allow")
    p.op(RET_K, SECCOMP_RET_ALLOW)
    p.label("kill")
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
    """Refuse READ_IMPLIES_EXEC, set no_new_privs, install `program` on every thread."""
    libc = _libc()
    persona = libc.personality(0xFFFFFFFF)
    if persona != -1 and persona & READ_IMPLIES_EXEC:
        raise SandboxError("Cowardly refusing to run with a sys_personality of READ_IMPLIES_EXEC. "
                           "Check your toolchain or unset the personality.")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(program) // 8, ctypes.addressof(insns)))
    if libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                    ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), fprog) != 0:
        raise SandboxError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(ctypes.get_errno())}")


def _open_fds() -> set[int]:
    """The descriptors open now (the listing's own, closed again, is left out)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
            fds.add(int(name))
        except OSError:
            pass
    return fds


def sandbox_vm(vm) -> None:
    """Confine the process around `vm`, which must be fully set up (fds open, threads running)."""
    reads, writes, blocks = set(), {2}, set()      # stderr for the tender's own messages
    dump_dirfd = debugger_fd = None
    for module in vm.modules:
        for fd, kind in module.host_fds():
            if kind in ("read", "rw"):
                reads.add(fd)
            if kind in ("write", "rw"):
                writes.add(fd)
            if kind == "block":
                blocks.add(fd)
            if kind == "dumpdir":
                dump_dirfd = fd
            if kind == "socket":
                debugger_fd = fd
    open_fds = _open_fds() if dump_dirfd is not None else set()
    install(build_filter(vm.vcpu.fd, reads, writes, blocks, dump_dirfd, open_fds, debugger_fd))
