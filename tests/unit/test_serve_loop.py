"""serve's relay (serve/relay.py), event loop (Server.run_once) and clone threads (serve/pool.py),
without KVM: loopback TCP sockets stand in for the client and the guest, a fake VM for a clone.
Every wait is bounded."""
import collections
import queue
import socket
import struct
import threading
import time

import pytest

from ukvm.serve import relay
from ukvm.serve.config import ServeConfig
from ukvm.serve.pool import Clone
from ukvm.serve.relay import READ, WRITE, Connection
from ukvm.serve.server import Server


def tcp_pair():
    """(near, far): a connected pair of loopback TCP sockets; `near` non-blocking (serve's end)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        far = socket.create_connection(srv.getsockname(), timeout=5)
        near, _ = srv.accept()
    near.setblocking(False)
    far.settimeout(5)
    return near, far


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_readable(sock, timeout=5):
    import select
    assert select.select([sock], [], [], timeout)[0]


class Relayed:
    """A Connection between a client and a guest (far ends kept for the test to drive)."""

    def __init__(self):
        self.client_near, self.client = tcp_pair()
        self.up_near, self.guest = tcp_pair()
        self.conn = Connection(self.client_near, time.perf_counter(), time.monotonic() + 10)
        self.conn.upstream = self.up_near
        self.conn.connected = True

    def step(self, side, events=READ | WRITE):
        wait_readable(self.client_near if side == "client" else self.up_near) if events == READ else None
        return relay.pump(self.conn, events, side == "client")


def test_the_guest_may_talk_first_and_the_client_close_first():
    r = Relayed()
    r.guest.sendall(b"220 hello\r\n")                 # a greeting before any client byte
    assert r.step("guest", READ) is None
    assert r.step("client", WRITE) is None
    assert r.client.recv(100) == b"220 hello\r\n"
    r.client.sendall(b"QUIT\r\n")
    r.client.shutdown(socket.SHUT_WR)                 # the client half-closes first
    assert r.step("client", READ) is None
    assert r.step("client", READ) is None             # EOF
    assert r.conn.client_eof and not r.conn.shut_upstream
    assert r.step("guest", WRITE) is None             # the bytes before the FIN go first, then the FIN
    assert r.conn.shut_upstream
    assert r.guest.recv(100) == b"QUIT\r\n" and r.guest.recv(100) == b""
    r.guest.sendall(b"221 bye\r\n")                   # the guest goes on talking after the client's FIN
    assert r.step("guest", READ) is None
    assert r.step("client", WRITE) is None
    assert r.client.recv(100) == b"221 bye\r\n"
    r.guest.close()
    assert r.step("guest", READ) == "ok"             # both directions closed: done
    assert r.client.recv(100) == b""


def test_the_guest_may_close_first_and_the_client_go_on_sending():
    r = Relayed()
    r.guest.sendall(b"data")
    r.guest.shutdown(socket.SHUT_WR)
    assert r.step("guest", READ) is None
    assert r.step("guest", READ) is None               # its EOF: not done, the client may still send
    assert r.step("client", WRITE) is None
    assert r.client.recv(100) == b"data" and r.client.recv(100) == b""
    r.client.sendall(b"more")
    assert r.step("client", READ) is None
    assert r.step("guest", WRITE) is None
    assert r.guest.recv(100) == b"more"
    r.client.close()
    assert r.step("client", READ) == "ok"


def test_a_client_that_closes_at_once_waits_for_the_guest_connection():
    """A half-close passed on while the connection to the guest is still being made would abort
    it (a SYN_SENT socket shut down is closed): it waits until that connection is established."""
    client_near, client = tcp_pair()
    with socket.create_server(("127.0.0.1", 0)) as guest_listener:
        up = socket.socket()
        up.setblocking(False)
        assert up.connect_ex(guest_listener.getsockname()) in (0, 115)     # EINPROGRESS
        conn = Connection(client_near, 0, 0)
        conn.upstream = up
        client.shutdown(socket.SHUT_WR)
        wait_readable(client_near)
        assert relay.pump(conn, READ, True) is None and conn.client_eof
        assert not conn.shut_upstream                       # not yet: still connecting
        assert relay.interest(conn, False) & WRITE
        import select
        assert select.select([], [up], [], 5)[1]
        assert relay.pump(conn, WRITE, False) is None
        assert conn.connected and conn.shut_upstream        # now the FIN follows
        guest, _ = guest_listener.accept()
        guest.settimeout(5)
        assert guest.recv(10) == b""                        # the guest sees a clean EOF, no reset
        guest.sendall(b"bye")
        guest.close()
        wait_readable(up)
        assert relay.pump(conn, READ, False) is None
        assert relay.pump(conn, WRITE, True) is None and conn.to_client == bytearray()
        wait_readable(up)
        assert relay.pump(conn, READ, False) == "ok"
        assert client.recv(10) == b"bye"
        up.close()
        client_near.close()
        client.close()


def test_a_guest_that_refuses_the_connection_ends_it():
    client_near, client = tcp_pair()
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]                           # closed again: nothing listens there
    up = socket.socket()
    up.setblocking(False)
    up.connect_ex(("127.0.0.1", port))
    conn = Connection(client_near, 0, 0)
    conn.upstream = up
    import select
    assert select.select([up], [up], [], 5) != ([], [], [])
    assert relay.pump(conn, READ | WRITE, False) == "guest_error"
    up.close()
    client_near.close()
    client.close()


def test_a_reset_ends_the_connection_with_its_side():
    r = Relayed()
    reset(r.client)
    assert r.step("client", READ) == "client_error"
    r = Relayed()
    reset(r.guest)
    assert r.step("guest", READ) == "guest_error"


def test_a_side_that_sends_without_reading_is_not_buffered_without_bound():
    r = Relayed()
    r.client.setblocking(False)
    sent = 0
    for _ in range(400):
        try:
            sent += r.client.send(b"x" * 65536)
        except BlockingIOError:
            break
        relay.pump(r.conn, READ, True)
    assert len(r.conn.to_guest) <= relay.BUFFER_LIMIT + relay.RELAY_CHUNK
    assert relay.interest(r.conn, True) & READ == 0   # full: the client is not read until it drains


# --- the loop --------------------------------------------------------------------------------
class FakeVM:
    def __init__(self, run=None, reset=None):
        self.stops = 0
        self.stopped = threading.Event()
        self._run, self._reset = run, reset
        self.core = type("Core", (), {"parked": False})()
        self.stats = type("Stats", (), {"counts": collections.defaultdict(int)})()

    def request_stop(self):
        self.stops += 1
        self.stopped.set()

    def run(self):
        if self._run:
            return self._run()
        self.stopped.wait(5)
        self.stopped.clear()
        return None

    def reset(self):
        if self._reset:
            self._reset()

    def close(self):
        pass


def make_server():
    config = ServeConfig.from_argv(["--listen=127.0.0.1:0", "--guest=10.0.0.2:80", "app.hvt"])
    logged = []
    return Server(config, log=logged.append), logged


def attach(server, r: Relayed, port=40000):
    """Put a relayed connection into the server's loop, as _assign would."""
    clone = Clone(0, FakeVM(), None, None, set())      # its thread never started
    clone.assign(r.conn)
    r.conn.clone, r.conn.port = clone, port
    server.by_port[port] = r.conn
    server.sel.register(r.client_near, READ, ("client", r.conn))
    server.sel.register(r.up_near, READ | WRITE, ("upstream", r.conn))
    r.conn.client_events, r.conn.upstream_events = READ, READ | WRITE
    return clone


def test_events_for_a_connection_ended_earlier_in_the_same_batch_are_ignored():
    """Issue 22's crash: the client's reset ends the connection, then the guest's event of the
    same epoll batch found its socket gone (AttributeError on None.recv)."""
    server, _ = make_server()
    try:
        r = Relayed()
        clone = attach(server, r)
        server.sel.unregister(r.up_near)
        reset(r.client)                                # the client's reset arrives...
        wait_readable(r.client_near)
        server.sel.register(r.up_near, READ, ("upstream", r.conn))
        r.guest.sendall(b"answer")                     # ...then the guest's answer
        wait_readable(r.up_near)
        ready = [kind for kind, _ in (k.data for k, _ in server.sel.select(0))]
        assert ready == ["client", "upstream"]         # both in one batch, the client's first
        server.run_once(0)
        assert r.conn.finished and server.counts["client_error"] == 1
        assert clone.vm.stops == 1 and not server.by_port
        assert not any(k.startswith("error_") for k in server.counts), server.counts
    finally:
        server.close()


def test_an_exception_in_a_handler_ends_only_its_connection(monkeypatch):
    server, _ = make_server()
    try:
        bad, good = Relayed(), Relayed()
        attach(server, bad, 40000)
        attach(server, good, 40001)
        real_pump = relay.pump

        def pump(conn, events, client_side):
            if conn is bad.conn:
                raise RuntimeError("bug")
            return real_pump(conn, events, client_side)
        monkeypatch.setattr(relay, "pump", pump)
        bad.client.sendall(b"x")
        good.client.sendall(b"request")
        for _ in range(20):                            # a bounded number of turns of the loop
            server.run_once(0.05)
        assert bad.conn.finished and server.counts["error_RuntimeError"] == 1 and server.counts["error"] == 1
        assert not good.conn.finished
        assert good.guest.recv(100) == b"request"      # the other connection goes on
        assert server.failure is None and not server.draining
    finally:
        server.close()


def test_a_server_level_error_is_one_line_and_a_drain():
    server, logged = make_server()
    try:
        server.fail("TAP x: Input/output error")
        server.fail("a second one")                    # said once
        assert logged == ["TAP x: Input/output error"] and server.draining
        assert server.failure == "TAP x: Input/output error"
    finally:
        server.close()


# --- clone threads ---------------------------------------------------------------------------
def run_clone(vm):
    reports = collections.deque()
    done = threading.Event()

    def report(clone, outcome, reset_s, run_outcome):
        reports.append((outcome, run_outcome))
        done.set()
    a, b = socket.socketpair()
    clone = Clone(0, vm, a, report, set())
    clone.start()
    assert done.wait(5)
    return clone, reports, b


def test_any_exception_in_a_clones_run_is_reported_and_the_clone_goes_on():
    calls = []

    def run():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("odd")
        time.sleep(0.01)
        return None
    clone, reports, other = run_clone(FakeVM(run=run))
    clone.closing = True
    clone.thread.join(5)
    assert not clone.thread.is_alive()
    assert reports[0] == (("fault", "ValueError: odd"), None)
    assert len(calls) >= 2                           # it ran again after the failure
    clone.sock.close()
    other.close()


def test_a_stop_for_a_run_that_is_over_does_not_reach_the_next_run():
    """A deadline passes just as the guest halts on its own: ending that connection then must not
    stop the clone's next (parked) run, whose connection would end for nothing."""
    assigned = threading.Event()
    runs = []

    def run():
        runs.append(1)
        if len(runs) == 1:
            assigned.wait(5)
            return 0                                 # the guest halted on its own
        vm.stopped.wait(5)                           # parked until stopped
        vm.stopped.clear()
        return None
    vm = FakeVM(run=run)
    reports = queue.Queue()
    a, b = socket.socketpair()
    clone = Clone(0, vm, a, lambda _c, outcome, _s, _r: reports.put(outcome), set())
    clone.start()
    try:
        first = object()
        clone.assign(first)
        assigned.set()
        assert reports.get(timeout=5) == ("halt", 0)    # that run is over, the clone reset
        clone.stop_serving(first)                        # the loop ends its connection late
        assert vm.stops == 0
        second = object()
        clone.assign(second)
        clone.stop_serving(second)                       # a run in progress is stopped
        assert reports.get(timeout=5) == ("stopped", None) and vm.stops == 1
    finally:
        clone.stop()
        clone.thread.join(5)
        a.close()
        b.close()


def test_a_clone_that_cannot_be_reset_reports_broken_and_ends_its_thread():
    def reset():
        raise OSError(24, "Too many open files")
    clone, reports, other = run_clone(FakeVM(run=lambda: 3, reset=reset))
    clone.thread.join(5)
    assert not clone.thread.is_alive()
    assert list(reports) == [(("broken", "reset failed: OSError: [Errno 24] Too many open files"), ("halt", 3))]
    clone.sock.close()
    other.close()


def test_a_broken_clone_leaves_the_pool_and_the_last_one_stops_the_server():
    server, logged = make_server()
    try:
        clones = []
        for i in range(2):
            a, b = socket.socketpair()
            c = Clone(i, FakeVM(), a, server._clone_report, set())
            server.clones.append(c)
            server.idle.append(c)
            server.sel.register(a, READ, ("clone", c))
            clones.append((c, b))
        from ukvm.hvt_abi import HYPERCALL_NAMES
        poll = next(nr for nr, name in HYPERCALL_NAMES.items() if name == "poll")
        clones[0][0].vm.stats.counts[poll] = 5
        clones[1][0].vm.stats.counts[poll] = 2
        server._clone_report(clones[0][0], ("broken", "reset failed: x"), 0.0, None)
        server.run_once(1)
        assert [c.index for c in server.clones] == [1] and server.failure is None
        assert server.exit_counts()[poll] == 7              # a retired clone's exits still count
        assert server.counts["failure_broken"] == 1
        server._clone_report(clones[1][0], ("broken", "reset failed: y"), 0.0, None)
        server.run_once(1)
        assert not server.clones and server.failure == "every clone failed to reset" and server.draining
        for _, b in clones:
            b.close()
    finally:
        server.close()
