"""sandbox/confined_boot.py: `ukvm serve`'s boot to its snapshot, in a confined child.

The boot runs the guest before serve is confined, so it runs in a child process of its own:
forked (one thread: the child may make a mount namespace), it makes the VM (KVM objects belong to
the process that made them), is confined exactly like serve (another user, no capabilities, an
empty root, not dumpable, a filter composed of what the VM, the warm-up and the capture declare),
runs the boot, and sends the snapshot back as one memfd holding a snapshot file's bytes (header,
metadata, sparse memory) over a socket pair. The parent reads it as it reads any snapshot file
(Snapshot.from_fd: every field checked): a compromised child can hand back only a bad guest.
"""
from __future__ import annotations

import array
import os
import select
import signal
import socket
import sys

from ukvm.errors import UkvmError

PR_SET_PDEATHSIG = 1


class BootError(UkvmError):
    pass


def boot_confined(make_snapshot, user: str | None, sandboxed: bool, timeout_s: float):
    """make_snapshot(confine) -> Snapshot, where confine(vm, extra_needs) is called once the VM
    exists and before the guest runs. Confined in a child (see the module docstring); with
    `sandboxed` False, here and unconfined."""
    if not sandboxed:
        return make_snapshot(lambda vm, extra: None)
    from ukvm.machine.snapshot import Snapshot
    from ukvm.sandbox import privileges
    uid, gid = privileges.lookup_user(user or "nobody")
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:                                          # the child: never returns
        parent_end.close()
        _child(make_snapshot, uid, gid, child_end, parent)
    child_end.close()
    try:
        if not select.select([parent_end], [], [], timeout_s)[0]:
            raise BootError(f"the confined boot did not finish within {timeout_s:.0f} s")
        msg, ancdata, _flags, _addr = parent_end.recvmsg(4096, socket.CMSG_SPACE(4))
        fds = [fd for level, kind, data in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", data[:len(data) - len(data) % 4])]
        if msg[:1] != b"S" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise BootError(msg[1:].decode(errors="replace") if msg[:1] == b"E" else "the confined boot failed")
        return Snapshot.from_fd(fds[0], "the confined boot's snapshot")
    finally:
        parent_end.close()
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _child(make_snapshot, uid: int, gid: int, chan: socket.socket, parent: int) -> None:
    code = 1
    try:
        from ukvm.sandbox.privileges import _libc
        # Dies with serve; if serve died before this line, there is nobody to boot for.
        if _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)

        image: list[int] = []             # the memfd the snapshot file is written to

        def confine(vm, extra) -> None:
            from ukvm.machine.snapshot import capture_needs
            from ukvm.sandbox import privileges
            from ukvm.sandbox.bpf import compile_needs
            from ukvm.sandbox.needs import Needs
            from ukvm.sandbox.policy import interpreter_needs, threads_needs, vm_needs
            vm.core.enable_wake()             # made now: the filter names it
            image.append(os.memfd_create("ukvm-snapshot-file", os.MFD_CLOEXEC))   # the same
            privileges.prepare()
            needs = (interpreter_needs() | vm_needs(vm) | capture_needs(vm) | threads_needs() | extra
                     | Needs().on_fds(("sendmsg", "sendto"), {chan.fileno()}).allow("pselect6", "getrandom")
                     .on_fds(("pwrite64", "ftruncate"), {image[0]}))
            program = compile_needs(needs)
            privileges.confine(uid, gid, program)

        snap = make_snapshot(confine)
        snap.write_image(image[0])
        chan.sendmsg([b"S"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [image[0]]))])
        code = 0
    except BaseException as e:            # noqa: BLE001 (one line back to the parent)
        try:
            text = str(e) if isinstance(e, UkvmError) else f"internal error: {type(e).__name__}: {e}"
            chan.send(b"E" + text.encode(errors="replace")[:4000])
        except BaseException:             # noqa: BLE001
            pass
    finally:
        os._exit(code)
