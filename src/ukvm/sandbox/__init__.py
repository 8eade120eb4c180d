"""sandbox: confine the tender after set-up, before the guest runs (docs/security.md).

The seccomp filter is a classic BPF program compiled here (bpf.py, no libseccomp) from what every
part of the tender declares it needs once confined (needs.py: modules, the clone and snapshot
machinery, the front end's loop; policy.py composes them per entry point). It is installed on all
threads (TSYNC) after every fd, thread and epoll set exists and before the guest runs. Anything
not declared kills the whole process (SIGSYS): no open, exec, fork, mprotect to executable or
executable mmap. Where an argument says what a call touches, it is filtered: the fd of reads and
writes, the fd and request of ioctl, PROT_EXEC for mmap, the target process of tgkill.

`ukvm serve` is also stripped of its privileges (privileges.py): another user, no capabilities,
not dumpable, an empty root in a mount namespace of its own (serve_confinement.py); its boot to
the snapshot runs in a child confined the same way (confined_boot.py).

May import: ukvm.errors and ukvm.kvm; machine/snapshot.py lazily, for what capture and saving
need. Every other layer declares its needs to it (needs.py), so nothing here names a module.
"""
from __future__ import annotations

from ukvm.sandbox.bpf import SandboxError, compile_needs, install

__all__ = ["SandboxError", "sandbox_vm", "confine_snapshot_run", "confined_start"]


def sandbox_vm(vm) -> None:
    """`ukvm run`: confine the process around `vm`, fully set up (fds open, threads running)."""
    from ukvm.sandbox.policy import run_needs
    install(compile_needs(run_needs(vm)))


def confine_snapshot_run(vm, writer) -> None:
    """`ukvm run --snapshot-at`: as sandbox_vm, plus taking the snapshot and writing it with
    `writer` (a SnapshotWriter, whose file is already open)."""
    from ukvm.sandbox.policy import snapshot_run_needs
    install(compile_needs(snapshot_run_needs(vm, writer)))


def confined_start(server, user: str | None = None, sandboxed: bool = True) -> None:
    """`ukvm serve`: server.start() between the two steps of confinement (serve_confinement.py)."""
    from ukvm.sandbox.serve_confinement import confined_start as start
    start(server, user, sandboxed)
