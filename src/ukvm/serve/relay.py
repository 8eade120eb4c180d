"""serve/relay.py: one client connection relayed to its clone's TCP service, byte for byte.

No assumption about the protocol: either side may talk first, either may half-close first, and
each half-close is passed on once the bytes before it are delivered. A connection is done
("ok") when both directions are closed; a reset or error on either side ends it at once. What a
side sent is buffered up to BUFFER_LIMIT; beyond that its socket is not read (back-pressure).
"""
from __future__ import annotations

import selectors
import socket

RELAY_CHUNK = 65536
BUFFER_LIMIT = 256 * 1024
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
AGAIN = object()


class Connection:
    __slots__ = ("client", "upstream", "clone", "port", "deadline", "started", "to_guest", "to_client",
                 "client_eof", "guest_eof", "shut_upstream", "shut_client", "connected", "number",
                 "client_events", "upstream_events")

    def __init__(self, client: socket.socket, started: float, deadline: float, number: int = 0):
        self.number = number                             # counted from 1 in accept order (cores' names)
        self.client: socket.socket | None = client      # None once the connection is finished
        self.upstream: socket.socket | None = None       # to the guest, through the TAP
        self.clone = None
        self.port = 0                                    # the upstream socket's host-side port
        self.started = started
        self.deadline = deadline
        self.to_guest = bytearray()
        self.to_client = bytearray()
        self.client_eof = self.guest_eof = False
        self.shut_upstream = self.shut_client = False
        self.connected = False                           # the upstream connection is established
        # What the loop's selector waits for on each socket (0: not registered): kept here, as
        # asking the selector raises, and formats, a KeyError for a socket it does not hold.
        self.client_events = self.upstream_events = 0

    @property
    def finished(self) -> bool:
        return self.client is None


def pump(conn: Connection, events: int, client_side: bool) -> str | None:
    """Move bytes for one socket of `conn` after `events` on it; the connection's outcome when it
    is over, else None."""
    sock = conn.client if client_side else conn.upstream
    if not client_side and not conn.connected:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return "guest_error"             # refused or unreachable: the guest did not answer
        if not events & WRITE:
            return None
        conn.connected = True                # writable without an error: established
    if client_side:
        inbox, outbox, eof = conn.to_guest, conn.to_client, conn.client_eof
    else:
        inbox, outbox, eof = conn.to_client, conn.to_guest, conn.guest_eof
    if events & READ and not eof and len(inbox) < BUFFER_LIMIT:
        data = _recv(sock)
        if data is None:
            return "client_error" if client_side else "guest_error"
        if data is not AGAIN:
            inbox += data
            if not data:
                if client_side:
                    conn.client_eof = True
                else:
                    conn.guest_eof = True
    if events & WRITE and outbox and not _send(sock, outbox):
        return "client_error" if client_side else "guest_error"
    return progress(conn)


def progress(conn: Connection) -> str | None:
    """Pass each half-close on once its direction is drained; "ok" once both are. (A shutdown
    before the upstream connection is established would abort it: it waits.)"""
    if conn.client_eof and not conn.to_guest and not conn.shut_upstream and conn.connected:
        conn.shut_upstream = _shutdown(conn.upstream)
    if conn.guest_eof and not conn.to_client and not conn.shut_client:
        conn.shut_client = _shutdown(conn.client)
    return "ok" if conn.shut_upstream and conn.shut_client else None


def interest(conn: Connection, client_side: bool) -> int:
    """The events to wait for on one side's socket (0: none; EOF is level-triggered)."""
    if client_side:
        reading = not conn.client_eof and len(conn.to_guest) < BUFFER_LIMIT
        return (READ if reading else 0) | (WRITE if conn.to_client else 0)
    reading = not conn.guest_eof and len(conn.to_client) < BUFFER_LIMIT
    return (READ if reading else 0) | (WRITE if conn.to_guest or not conn.connected else 0)


def _recv(s: socket.socket):
    """Bytes read (b"" at EOF), AGAIN when there are none yet, None on a connection error."""
    try:
        return s.recv(RELAY_CHUNK)
    except (BlockingIOError, InterruptedError):
        return AGAIN
    except OSError:
        return None


def _send(s: socket.socket, buf: bytearray) -> bool:
    try:
        n = s.send(buf)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    del buf[:n]
    return True


def _shutdown(s: socket.socket) -> bool:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return True
