"""sandbox/needs.py: the words a part of the tender uses to say which system calls it makes.

Every part that runs after confinement (each module, the VM's clone machinery, a front end's
event loop) returns a Needs; the sandbox compiles the union of them into one seccomp program
(bpf.py). A rule names a system call and, optionally, conditions on its arguments; a call is
allowed when any one of its rules holds. Only the low 32 bits of an argument are compared: fds,
ioctl requests, flags and pids are 32-bit in the kernel too.

Imports nothing from ukvm: the machine and the modules import it to declare what they need.
"""
from __future__ import annotations

import os

# x86_64 system call numbers of every call some part may declare (unknown names are an error).
NR = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "poll": 7, "lseek": 8,
    "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14,
    "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20,
    "sched_yield": 24, "mremap": 25, "madvise": 28, "dup": 32, "nanosleep": 35, "getpid": 39,
    "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46,
    "recvmsg": 47, "shutdown": 48, "bind": 49, "listen": 50, "getsockname": 51, "getpeername": 52,
    "setsockopt": 54, "getsockopt": 55, "clone": 56, "fork": 57, "execve": 59, "exit": 60,
    "kill": 62, "fcntl": 72, "fsync": 74, "fdatasync": 75, "ftruncate": 77, "getcwd": 79,
    "getuid": 102, "getgid": 104, "geteuid": 107, "getegid": 108, "prctl": 157, "gettid": 186,
    "futex": 202, "sched_setaffinity": 203, "sched_getaffinity": 204, "set_tid_address": 218,
    "clock_gettime": 228, "gettimeofday": 96, "mincore": 27, "renameat": 264, "unlinkat": 263, "renameat2": 316, "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232,
    "epoll_ctl": 233, "tgkill": 234, "openat": 257, "newfstatat": 262, "pselect6": 270, "ppoll": 271,
    "set_robust_list": 273, "epoll_pwait": 281, "accept4": 288, "eventfd2": 290,
    "epoll_create1": 291, "pipe2": 293, "getrandom": 318, "memfd_create": 319, "seccomp": 317,
    "preadv2": 327, "pwritev2": 328, "statx": 332, "rseq": 334, "clone3": 435, "openat2": 437,
}

# One condition on one argument: (index, kind, value) with kind "in" (value: a frozenset),
# "not_in" (a frozenset) or "clear" (value: a mask none of whose bits may be set).
Test = tuple[int, str, object]


def arg_in(index: int, values) -> Test:
    return (index, "in", frozenset(v & 0xFFFFFFFF for v in values))


def arg_not_in(index: int, values) -> Test:
    return (index, "not_in", frozenset(v & 0xFFFFFFFF for v in values))


def arg_clear(index: int, mask: int) -> Test:
    return (index, "clear", mask & 0xFFFFFFFF)


class Needs:
    """System calls one part of the tender makes once confined; see the module docstring."""

    def __init__(self):
        self.rules: dict[str, set[tuple[Test, ...]]] = {}      # name -> alternatives; () = always
        self.errors: dict[str, int] = {}       # calls answered with an errno instead of a kill

    def _add(self, name: str, tests: tuple[Test, ...]) -> None:
        if name not in NR:
            raise KeyError(f"unknown system call {name!r}")
        self.rules.setdefault(name, set()).add(tests)

    def allow(self, *names: str) -> Needs:
        """Calls allowed whatever their arguments."""
        for name in names:
            self._add(name, ())
        return self

    def when(self, name: str, *tests: Test) -> Needs:
        """`name` allowed when all `tests` hold (one more alternative)."""
        self._add(name, tuple(sorted(tests)))
        return self

    def on_fds(self, names, fds) -> Needs:
        """Calls whose first argument is a descriptor, allowed on `fds` only."""
        fds = frozenset(fds)
        if fds:
            for name in ([names] if isinstance(names, str) else names):
                self.when(name, arg_in(0, fds))
        return self

    def ioctl(self, fds, *requests: int) -> Needs:
        """ioctl with one of `requests` on one of `fds`."""
        if fds and requests:
            self.when("ioctl", arg_in(0, fds), arg_in(1, requests))
        return self

    def refuse(self, name: str, err: int) -> Needs:
        """`name` fails with `err` instead of killing (callers that fall back, like clone3)."""
        if name not in NR:
            raise KeyError(f"unknown system call {name!r}")
        self.errors[name] = err
        return self

    def __or__(self, other: Needs) -> Needs:
        return Needs.union((self, other))

    @staticmethod
    def union(parts) -> Needs:
        """One Needs of many (a serve pool's thousands of parts): gathered in place, not by |."""
        out = Needs()
        for part in parts:
            for name, alternatives in part.rules.items():
                out.rules.setdefault(name, set()).update(alternatives)
            out.errors.update(part.errors)
        return out


def open_fds() -> set[int]:
    """The descriptors open now (the listing's own, closed again, left out): a rule can then
    allow a call only on descriptors made later (dumpcore's core file)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
            fds.add(int(name))
        except OSError:
            pass
    return fds
