"""sandbox/policy.py: the filters of the entry points, each the union of what its parts declare.

Every entry point starts from what CPython and glibc do on any thread (interpreter_needs), adds
what each of its VMs' modules declares (Module.sandbox_needs) and what the machinery it drives
declares (machine/snapshot.py: clone_needs, capture_needs, SnapshotWriter.sandbox_needs), and what
its own loop does: `ukvm run` nothing more, `ukvm serve` its event loop and metrics thread
(serve_loop_needs). Nothing here names a module or an option of one.
"""
from __future__ import annotations

import errno
import os

from ukvm.sandbox.needs import Needs, arg_clear, arg_in

PROT_EXEC = 0x4
# The flags glibc's pthread_create passes to clone: a thread of this process, never a new one.
CLONE_THREAD_FLAGS = 0x3D0F00       # VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
FIONBIO = 0x5421


def interpreter_needs() -> Needs:
    """What the interpreter itself does on every thread, whatever the tender runs."""
    return (Needs()
            .allow("futex",                       # the GIL, locks, thread joins
                   "munmap", "brk", "madvise",    # the allocator; guest memory teardown
                   "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",   # SIGINT/SIGTERM/SIGUSR1
                   "getpid", "gettid", "close", "exit", "exit_group")
            .when("mmap", arg_clear(2, PROT_EXEC))                 # memory, never executable
            .when("tgkill", arg_in(0, {os.getpid()}))               # signals to this process's threads only
            .on_fds("write", {2}))                                  # the tender's own messages


def vm_needs(vm) -> Needs:
    """What one VM's modules declare."""
    return Needs.union(module.sandbox_needs(vm) for module in vm.modules)


def run_needs(vm) -> Needs:
    """`ukvm run`: the interpreter and the modules; nothing else."""
    return interpreter_needs() | vm_needs(vm)


def snapshot_run_needs(vm, writer) -> Needs:
    """`ukvm run --snapshot-at=ready --snapshot=FILE`: a run, then VM.snapshot() and the writer."""
    from ukvm.machine.snapshot import capture_needs
    return run_needs(vm) | capture_needs(vm) | writer.sandbox_needs()


def threads_needs() -> Needs:
    """Starting and ending threads after confinement (the metrics server starts one per
    scrape): clone with the flags of a thread only; clone3 says ENOSYS, so glibc falls back to
    clone, whose flags the filter can see."""
    return (Needs().when("clone", arg_in(0, {CLONE_THREAD_FLAGS}))
            .refuse("clone3", errno.ENOSYS)
            .allow("set_robust_list", "rseq", "gettid")
            .when("mprotect", arg_clear(2, PROT_EXEC)))          # the new stack's guard page


def serve_loop_needs(loop_fds: set[int], reads_writes: set[int]) -> Needs:
    """`ukvm serve`'s event loop and metrics thread: epoll on the loop's own selector (poll for
    the metrics server's), TCP sockets of the IPv4 family only (a connection's two ends: accepted
    from the listener, and the one it opens to the guest over the TAP), read/write on the TAP and
    the loop's eventfd only. Socket calls take any descriptor: each connection's are new ones."""
    import socket         # serve's only: `socket` costs every `ukvm run` ~5 ms (docs/performance.md)
    stream = socket.SOCK_STREAM | socket.SOCK_CLOEXEC
    return (Needs()
            .on_fds(("epoll_wait", "epoll_ctl"), loop_fds)
            .allow("poll", "clock_gettime", "gettimeofday", "sched_yield")
            .on_fds(("read", "write"), reads_writes)
            .allow("accept4", "recvfrom", "sendto", "shutdown", "getsockname", "getpeername",
                   "setsockopt", "getsockopt", "bind", "connect")
            .when("socket", arg_in(0, {socket.AF_INET}), arg_in(1, {stream}), arg_in(2, {0, socket.IPPROTO_TCP}))
            .when("ioctl", arg_in(1, {FIONBIO}))                  # socket.setblocking
            .when("sched_setaffinity", arg_in(0, {0}))            # a clone thread pins itself
            | threads_needs())
