"""modules/net/backend.py: where a NIC's frames come from and go to.

The net module and its ring server see a backend only as one non-blocking fd that carries
exactly one Ethernet frame per read and per write, its MTU and a name for messages. Two kinds:
a TAP interface (`--net:NAME=IFACE` or an fd handed over as `@FD`), and one end of a
SOCK_SEQPACKET socket pair whose other end belongs to `ukvm serve`'s switch (serve.py), which
demultiplexes one TAP's frames to many clones. A read into a buffer shorter than the frame
truncates it on both kinds, as a guest expects.
"""
from __future__ import annotations

import errno
import os
TYPE_CHECKING = False     # typing.TYPE_CHECKING without importing typing (~3 ms per start)
if TYPE_CHECKING:
    import socket


class NetBackend:
    __slots__ = ("name", "fd", "mtu", "owns_fd")

    def __init__(self, name: str, fd: int, mtu: int, owns_fd: bool = True):
        self.name, self.fd, self.mtu, self.owns_fd = name, fd, mtu, owns_fd

    @classmethod
    def tap(cls, iface: str) -> NetBackend:
        """TAP `iface` by name, or an open TAP fd given as `@FD` (not closed by us)."""
        from ukvm.modules.net.tap import adopt_tap_fd, open_tap   # only when a NIC is attached
        if iface.startswith("@"):
            if not iface[1:].isdigit():
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            fd, mtu, _ = adopt_tap_fd(int(iface[1:]))
            return cls(iface, fd, mtu, owns_fd=False)
        fd, mtu = open_tap(iface)
        return cls(iface, fd, mtu)

    def close(self) -> None:
        if self.owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


def frame_pipe(name: str, mtu: int) -> tuple[NetBackend, socket.socket]:
    """A backend for a VM and the socket its switch uses for the other direction."""
    import socket      # only for `ukvm serve`: every `ukvm run` imports this module (3 ms)
    vm_end, switch_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Room for a burst of full frames each way: a TCP window's worth queued for a slow guest.
    for s in (vm_end, switch_end):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    vm_end.setblocking(False)
    switch_end.setblocking(False)
    return NetBackend(name, vm_end.detach(), mtu), switch_end
