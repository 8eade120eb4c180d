"""serve/loop.py: the event loop of `ukvm serve` (Server inherits it; server.py makes what it uses).

One epoll over the listening socket, the TAP, each clone's switch socket, both sockets of every
connection, and an eventfd through which clone threads report. Nothing that happens to one
connection ends the loop: a handler that fails ends that connection, counted by cause; a
failure of the server itself (its TAP, every clone gone) is one line and a drain. The loop opens
no file and creates no KVM object: it runs confined.
"""
from __future__ import annotations

import os
import socket
import struct
import time

from ukvm.errors import UkvmError
from ukvm.hvt_abi import HYPERCALL_NAMES
from ukvm.serve import relay
from ukvm.serve.pool import Clone
from ukvm.serve.relay import READ, WRITE, Connection
from ukvm.serve.switch import AFTER_CONNECTION, FORWARD, NO_CONNECTION, QUEUE_FULL, REPLY

DRAIN_GRACE_S = 5.0
ACCEPT_BATCH = 64
FRAME_BATCH = 256


class LoopError(UkvmError):
    pass


class EventLoop:
    """The loop's half of Server: its state is made by Server.__init__ and Server.start()."""

    # --- the event loop ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until a drain (request_drain, or a server-level failure) is complete."""
        while not (self.draining and not self.by_port and not self.waiting and len(self.idle) == len(self.clones)):
            if self.drain_requested:
                self.drain()
            if self.draining and time.monotonic() > self.drain_deadline:
                busy = len(self.clones) - len(self.idle)
                self.log(f"drain: {busy} clone(s) did not come back within {DRAIN_GRACE_S:.0f} s after the deadline")
                return
            self.run_once(self._expire(time.monotonic()))

    def run_once(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for events and handle them. A handler's exception ends
        only what it was handling (_handler_failed)."""
        for key, events in self.sel.select(timeout):
            kind, obj = key.data
            try:
                if kind == "client" or kind == "upstream":
                    self._relay(obj, events, kind == "client")
                elif kind == "clone":
                    self._from_clone(obj)
                elif kind == "tap":
                    self._from_tap()
                elif kind == "listen":
                    self._accept()
                else:
                    self._reports()
            except Exception as e:     # noqa: BLE001 (sorted out by _handler_failed: never the loop's end)
                self._handler_failed(kind, obj, e)

    def _handler_failed(self, kind: str, obj, e: Exception) -> None:
        """A connection's handling failed: that connection ends. Anything else is the server's
        own failure: one line, and a drain."""
        conn = obj if kind in ("client", "upstream") else getattr(obj, "conn", None) if kind == "clone" else None
        if conn is not None:
            self._connection_error(conn, e)
            return
        if kind == "clone":        # an idle clone's frame: nothing to end
            self.counts[f"error_{type(e).__name__}"] += 1
            if self.metrics:
                self.metrics.errors.labels(type(e).__name__).inc()
            return
        self.fail(f"{e}" if isinstance(e, UkvmError) else f"internal error in the {kind} handler: "
                  f"{type(e).__name__}: {e}")

    def _connection_error(self, conn: Connection, e: Exception) -> None:
        cause = type(e).__name__
        self.counts[f"error_{cause}"] += 1
        if self.metrics:
            self.metrics.errors.labels(cause).inc()
        try:
            self._finish(conn, "error")
        except Exception:          # noqa: BLE001 (closing what is left of it must not fail the loop)
            conn.client = conn.upstream = None

    def fail(self, message: str) -> None:
        """A server-level failure: said once, then the connections in flight are drained."""
        if self.failure is None:
            self.failure = message
            self.log(message)
        self.drain()

    def request_drain(self) -> None:
        """From a signal handler: drain at the next turn of the loop."""
        self.drain_requested = True
        try:
            os.eventfd_write(self.report_fd, 1)
        except OSError:
            pass

    def drain(self) -> None:
        """Stop accepting; serve_forever returns once the connections in flight are done."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = time.monotonic() + self.config.deadline_s + DRAIN_GRACE_S
            if self.listener is not None:
                self.sel.unregister(self.listener)
                self.listener.close()
                self.listener = None
            for conn in list(self.waiting):
                self._finish(conn, "rejected")
            self.waiting.clear()

    def _expire(self, now: float) -> float:
        """End connections past their deadline; the time until the next deadline."""
        nearest = 1.0
        for conn in list(self.by_port.values()) + list(self.waiting):
            left = conn.deadline - now
            if left <= 0:
                if conn.clone is not None and conn.clone.serving is conn:    # not a run that just ended
                    self._count_failure("timeout")
                self._finish(conn, "timeout")
            else:
                nearest = min(nearest, left)
        return nearest

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.listener is None:
                return
            try:
                client, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:       # ECONNABORTED, EMFILE...: that client is lost, not the server
                self._count_error(type(e).__name__)
                return
            try:
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:       # already reset by the client
                client.close()
                self._count_error(type(e).__name__)
                continue
            self.accepted += 1
            conn = Connection(client, time.perf_counter(), time.monotonic() + self.config.deadline_s, self.accepted)
            if self.idle:
                self._start_connection(conn, self.idle.popleft())
            elif len(self.waiting) < self.config.max_waiting:
                self.waiting.append(conn)
            else:
                self._finish(conn, "rejected")

    def _start_connection(self, conn: Connection, clone: Clone) -> None:
        try:
            self._assign(conn, clone)
        except Exception as e:         # noqa: BLE001 (no port left, ...): this connection only
            self._connection_error(conn, e)

    def _assign(self, conn: Connection, clone: Clone) -> None:
        """Give `conn` to `clone` and connect to the guest through the TAP."""
        conn.clone = clone
        clone.assign(conn)
        if self.metrics:
            self.metrics.in_use.inc()
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.upstream = up
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.bind((str(self.host_ip), 0))
        conn.port = up.getsockname()[1]
        self.by_port[conn.port] = conn
        try:
            up.connect((str(self.guest_ip), self.guest_port))
        except BlockingIOError:
            pass
        self.sel.register(conn.client, READ, ("client", conn))
        conn.client_events = READ
        self.sel.register(up, READ | WRITE, ("upstream", conn))
        conn.upstream_events = READ | WRITE

    # --- relaying ------------------------------------------------------------------------------
    def _relay(self, conn: Connection, events: int, client_side: bool) -> None:
        if conn.finished:
            return                     # an event from the same batch, for a connection already over
        outcome = relay.pump(conn, events, client_side)
        if outcome is not None:
            self._finish(conn, outcome)
            return
        conn.client_events = self._watch(conn.client, conn.client_events, relay.interest(conn, True),
                                         ("client", conn))
        conn.upstream_events = self._watch(conn.upstream, conn.upstream_events, relay.interest(conn, False),
                                           ("upstream", conn))

    def _watch(self, sock: socket.socket, now: int, events: int, data) -> int:
        """Wait for `events` on `sock` (none: not at all), which the selector holds with `now`."""
        if events != now:
            if not now:
                self.sel.register(sock, events, data)
            elif not events:
                self.sel.unregister(sock)
            else:
                self.sel.modify(sock, events, data)
        return events

    def _finish(self, conn: Connection, outcome: str, stop_clone: bool = True) -> None:
        """Close the connection's sockets and stop its clone (unless its run is over already:
        a stop then would end the clone's next run); counted once."""
        if conn.finished:
            return
        client, up = conn.client, conn.upstream
        conn.client = conn.upstream = None
        for s, registered in ((client, conn.client_events), (up, conn.upstream_events)):
            if s is None:
                continue
            if registered:
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
            if s is up:                # reset, not FIN: the clone is gone, nothing to wait for
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            s.close()
        self.counts[outcome] += 1
        if self.metrics:
            self.metrics.requests.labels(outcome).inc()
            if outcome == "ok":
                self.metrics.latency.observe(time.perf_counter() - conn.started)
        if conn.clone is not None:
            if self.by_port.get(conn.port) is conn:
                del self.by_port[conn.port]
            if stop_clone:
                conn.clone.stop_serving(conn)
        else:
            try:
                self.waiting.remove(conn)
            except ValueError:
                pass

    def _count_failure(self, cause: str) -> None:
        self.counts[f"failure_{cause}"] += 1
        if self.metrics:
            self.metrics.failures.labels(cause).inc()

    def _count_error(self, cause: str) -> None:
        self.counts[f"error_{cause}"] += 1
        if self.metrics:
            self.metrics.errors.labels(cause).inc()

    # --- clone runs ----------------------------------------------------------------------------
    def _clone_report(self, clone: Clone, outcome: tuple, reset_s: float, run_outcome) -> None:
        """From a vCPU thread: its run ended and the clone was reset (or is broken)."""
        self.reports.append((clone, outcome, reset_s, run_outcome))
        os.eventfd_write(self.report_fd, 1)

    def _reports(self) -> None:
        try:
            os.eventfd_read(self.report_fd)
        except BlockingIOError:
            pass
        while self.reports:
            clone, (kind, detail), reset_s, run_outcome = self.reports.popleft()
            conn, clone.conn = clone.conn, None
            if kind == "broken" and run_outcome is not None:
                kind_run, detail_run = run_outcome
                if kind_run in ("halt", "fault"):
                    self._run_failed(clone, kind_run, detail_run)
            if conn is None and kind == "stopped":
                continue            # stopped while parked: nothing to account for
            self._run_failed(clone, kind, detail)
            if conn is not None:
                self._finish(conn, "guest_" + kind, stop_clone=False)
                if self.metrics:
                    self.metrics.in_use.dec()
            if kind == "broken":
                self._retire(clone)
                continue
            self._discard_stale_frames(clone)
            self.counts["resets"] += 1
            self.reset_seconds.append(reset_s)
            if self.metrics:
                self.metrics.resets.inc()
                self.metrics.reset_latency.observe(reset_s)
            if clone not in self.idle:
                self.idle.append(clone)
            while self.waiting and self.idle:
                self._start_connection(self.waiting.popleft(), self.idle.popleft())

    def _discard_stale_frames(self, clone: Clone) -> None:
        """What the clone sent for its last connection and the switch has not read yet: never to
        be taken for its next connection's."""
        for _ in range(FRAME_BATCH * 16):
            try:
                clone.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            self._dropped("clone", AFTER_CONNECTION)

    def _run_failed(self, clone: Clone, kind: str, detail) -> None:
        if kind in ("halt", "fault", "broken"):
            self._count_failure({"halt": "exit", "fault": "fault", "broken": "broken"}[kind])
            self.log(f"clone {clone.index}: " + (f"guest exited with status {detail}" if kind == "halt" else detail))

    def _retire(self, clone: Clone) -> None:
        """A clone that cannot be reset leaves the pool (a new one would need new KVM objects,
        which the confined loop cannot make); the server goes on while any clone is left."""
        clone.retired = True
        for nr in HYPERCALL_NAMES:
            self.retired_exits[nr] += clone.vm.stats.counts[nr]
        try:
            self.sel.unregister(clone.sock)
        except (KeyError, ValueError):
            pass
        self.clones.remove(clone)
        try:
            self.idle.remove(clone)
        except ValueError:
            pass
        try:
            clone.vm.close()
        except Exception:          # noqa: BLE001 (it is broken already; its fds go at exit at worst)
            pass
        clone.sock.close()
        self.log(f"clone {clone.index} left the pool; {len(self.clones)} left")
        if self.metrics:
            self.metrics.clones.set(len(self.clones))
        if not self.clones:
            self.fail("every clone failed to reset")

    # --- the switch ----------------------------------------------------------------------------
    def _from_tap(self) -> None:
        switch = self.switch
        for _ in range(FRAME_BATCH):
            try:
                frame = os.read(self.tap_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise LoopError(f"TAP {self.tap_name}: {os.strerror(e.errno)}") from None
            action, value = switch.from_tap(frame)
            if action == FORWARD:
                conn = self.by_port.get(value)
                if conn is None or conn.clone is None:
                    self._dropped("tap", NO_CONNECTION)
                    continue
                try:
                    conn.clone.sock.send(frame)
                except OSError:          # its queue is full: TCP retransmits
                    self._dropped("tap", QUEUE_FULL)
            elif action == REPLY:
                try:
                    os.write(self.tap_fd, value)
                except OSError:
                    self._dropped("tap", QUEUE_FULL)
            else:
                self._dropped("tap", value)

    def _from_clone(self, clone: Clone) -> None:
        if clone.retired:
            return
        switch = self.switch
        for _ in range(FRAME_BATCH):
            try:
                frame = clone.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            conn = clone.conn
            action, value = switch.from_clone(frame, None if conn is None or conn.finished else conn.port)
            if action == FORWARD:
                try:
                    os.write(self.tap_fd, frame)
                except OSError:
                    self._dropped("clone", QUEUE_FULL)
            elif action == REPLY:
                try:
                    clone.sock.send(value)
                except OSError:
                    self._dropped("clone", QUEUE_FULL)
            else:
                self._dropped("clone", value)

    def _dropped(self, source: str, reason: str) -> None:
        self.counts[f"dropped_{source}_{reason}"] += 1
        if self.metrics:
            self.metrics.dropped.labels(source, reason).inc()
