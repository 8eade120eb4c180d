"""signals.py: signals that end a run (SIGINT and SIGTERM in `ukvm run`), never lost.

A Python handler runs only between bytecodes. A signal that lands after the run loop's last check
and before KVM_RUN (or POLL's epoll_wait) enters the kernel would wait for the next exit, and a
guest that spins, or sleeps for an hour, makes none: the tender hung (seen in CI, once in about a
thousand runs). So, as in other monitors, these signals stay blocked in every thread; KVM_RUN
unblocks them atomically for as long as the guest runs (KVM_SET_SIGNAL_MASK), and POLL waits on a
signalfd for them. When either reports one, deliver() unblocks them for a moment: the pending
signal's handler runs at once (and raises, cli/run.py).

Process-wide, like the signal mask and handlers themselves; unused (nothing blocked) unless
end_runs_on() was called, as `ukvm serve` does not.
"""
from __future__ import annotations

import ctypes
import os
import _signal as signal  # the C module behind `signal`, without its enum import

from ukvm.errors import UkvmError

_SFD_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK      # SFD_CLOEXEC, SFD_NONBLOCK have these values
_caught: frozenset = frozenset()
_fd = -1


def _sigset(signums) -> ctypes.Array:
    words = (ctypes.c_uint64 * 16)()                   # glibc's sigset_t: 1024 bits
    for s in signums:
        words[(s - 1) // 64] |= 1 << ((s - 1) % 64)
    return words


def end_runs_on(signums) -> None:
    """From now on `signums` end a run only through deliver(). Call in the main thread, after
    their handlers are installed and before any other thread starts (threads inherit the mask)."""
    global _caught, _fd
    signums = frozenset(signums)
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.signalfd(-1, ctypes.byref(_sigset(signums)), _SFD_FLAGS)
    if fd < 0:
        raise UkvmError(f"signalfd: {os.strerror(ctypes.get_errno())}")
    _caught, _fd = signums, fd


def pending_fd() -> int:
    """A signalfd readable while one of the caught signals is pending, or -1 (none caught). Never
    read: deliver() takes the signal."""
    return _fd


def unblock_in_run(vcpu) -> None:
    """Let the caught signals interrupt this vCPU's KVM_RUN (EINTR), and only it."""
    if _caught:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        vcpu.set_signal_mask(sum(1 << (s - 1) for s in blocked if s not in _caught))


def deliver() -> None:
    """Run the handler of a caught signal that is pending (it usually raises); nothing if none."""
    if _caught:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _caught)
        signal.pthread_sigmask(signal.SIG_BLOCK, _caught)


class unblocked:
    """`with unblocked():` around a wait on a person (gdb): the caught signals interrupt it as
    they would anywhere."""

    def __enter__(self) -> None:
        if _caught:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _caught)

    def __exit__(self, *exc) -> None:
        if _caught:
            signal.pthread_sigmask(signal.SIG_BLOCK, _caught)
