"""serve/server.py: the set-up (start) and the event loop (serve_forever) of `ukvm serve`.

start() makes everything the loop will ever use: the TAP, the listening and metrics sockets, the
snapshot (warmup.py) and the clones with their KVM objects. serve_forever() then only accepts,
connects to the guest through the TAP, relays and switches: it opens no file and creates no KVM
object, so the process can be confined between the two (the sandbox's one call, serve_main).

The loop is one epoll over the listening socket, the TAP, each clone's switch socket, both
sockets of every connection, and an eventfd through which clone threads report. Nothing that
happens to one connection ends the server: a handler that fails ends that connection, counted
by cause; a failure of the server itself (its TAP, every clone gone) is one line and a drain.
"""
from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import struct
import threading
import time

from ukvm.errors import UkvmError
from ukvm.machine.manifest import MFT_DEV_NET_BASIC
from ukvm.machine.snapshot import data_ranges
from ukvm.machine.vm import VM, Kernel
from ukvm.modules import default_modules
from ukvm.modules.net import NetModule
from ukvm.modules.net.backend import frame_pipe
from ukvm.serve import relay
from ukvm.serve.config import ServeConfig, parse_routes, route_clash
from ukvm.serve.pool import Clone
from ukvm.serve.relay import READ, WRITE, Connection
from ukvm.serve.switch import AFTER_CONNECTION, FORWARD, NO_CONNECTION, QUEUE_FULL, REPLY, Switch
from ukvm.serve.warmup import boot_and_snapshot

DRAIN_GRACE_S = 5.0
MTU = 1500
ACCEPT_BATCH = 64
FRAME_BATCH = 256


class ServeError(UkvmError):
    pass


def vcpu_cpus() -> set[int]:
    """The CPUs for clones' vCPU threads: all this process may use but the first, which is left to
    the event loop. A vCPU that moves between CPUs costs kvm_pvm a great deal (measured: 30% more
    CPU per request unpinned on 2 cores); an empty set (one CPU) means no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[1:]) if len(allowed) > 1 else set()


class Server:
    def __init__(self, config: ServeConfig, log=None):
        import sys
        self.config = config
        self.log = log or (lambda msg: print(f"ukvm serve: {msg}", file=sys.stderr, flush=True))
        self.guest_ip, self.guest_port = config.guest_ip, config.guest_port
        self.host_ip = config.host.ip
        self.clones: list[Clone] = []
        self.idle: collections.deque[Clone] = collections.deque()
        self.waiting: collections.deque[Connection] = collections.deque()
        self.by_port: dict[int, Connection] = {}
        self.reports: collections.deque = collections.deque()
        self.draining = self.drain_requested = False
        self.drain_deadline = 0.0
        self.failure: str | None = None        # the server-level error that ended it, if any
        self.counts = collections.Counter()
        self.reset_seconds: collections.deque[float] = collections.deque(maxlen=100000)   # for bench/
        self.snapshot = None
        self.metrics = None
        self.switch: Switch | None = None
        self.tap_fd = -1
        self.tap_name = config.tap_name or f"ukvms{os.getpid() % 100000}"
        self.listener: socket.socket | None = None
        self.address = None
        self.sel = selectors.EpollSelector()
        self.report_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sel.register(self.report_fd, READ, ("report", None))

    # --- set-up --------------------------------------------------------------------------------
    def start(self) -> None:
        """Create everything the loop uses. On failure everything made so far is released."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from ukvm.modules.net.tap import create_tap
        # A clone's vCPU thread is stopped by a signal (VM.request_stop): it needs a handler,
        # installed before the threads start (only the main thread can install it).
        if threading.current_thread() is threading.main_thread() and not callable(signal.getsignal(signal.SIGUSR1)):
            signal.signal(signal.SIGUSR1, lambda *_: None)
        cfg = self.config
        self._check_host_network()
        # Addresses first: a port in use is one line before anything boots.
        try:
            self.listener = socket.create_server(cfg.listen, backlog=1024)
        except OSError as e:
            raise ServeError(f"--listen {cfg.listen[0]}:{cfg.listen[1]}: {e.strerror or e}") from None
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        try:
            self.tap_fd, tap_mac = create_tap(self.tap_name, self.host_ip.packed, cfg.host.netmask.packed)
        except OSError as e:
            raise ServeError(f"cannot create TAP {self.tap_name}: {os.strerror(e.errno)}") from None
        if cfg.metrics is not None:
            from ukvm.serve.metrics import Metrics
            try:
                self.metrics = Metrics(self.clones, cfg.metrics)
            except OSError as e:
                raise ServeError(f"--metrics {cfg.metrics[0]}:{cfg.metrics[1]}: {os.strerror(e.errno)}") from None
            self.metrics.in_use.set(0)
        kernel = Kernel(cfg.kernel)
        try:
            self._boot(kernel, tap_mac)
        finally:
            kernel.close()
        cpus = vcpu_cpus()
        for i in range(cfg.pool):
            self._add_clone(i, cpus)
        if self.metrics:
            self.metrics.clones.set(len(self.clones))
        self.sel.register(self.listener, READ, ("listen", None))
        self.sel.register(self.tap_fd, READ, ("tap", None))
        for clone in self.clones:
            clone.start()

    def _check_host_network(self) -> None:
        """The TAP's network must be new to the host: no route into it, not one of its addresses."""
        try:
            with open("/proc/net/route") as f:
                clash = route_clash(self.config, parse_routes(f.read()))
        except OSError:
            clash = None
        if clash is None:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((str(self.host_ip), 0))
                clash = (f"--host-ip {self.host_ip} is already an address of this host: choose a free network "
                         f"with --host-ip=IP/PREFIX and --guest=IP:PORT in it")
            except OSError:
                pass                     # EADDRNOTAVAIL: not ours, as it should be
            finally:
                probe.close()
        if clash:
            raise ServeError(clash)

    @staticmethod
    def _net_module(modules) -> NetModule:
        """The net module, once the manifest is known to declare exactly one NIC and nothing else."""
        entries = modules[0].manifest.devices()
        if len(entries) != 1 or entries[0].type != MFT_DEV_NET_BASIC:
            raise ServeError("the unikernel must declare exactly one device, of type NET_BASIC")
        return next(m for m in modules if isinstance(m, NetModule))

    def _boot(self, kernel: Kernel, tap_mac: bytes) -> None:
        """Boot on a switch port of our own, warm it up, snapshot it (warmup.py)."""
        modules = default_modules(kernel.manifest())
        net = self._net_module(modules)
        backend, sock = frame_pipe("serve", MTU)
        net.ring_mode = "off"   # measured slower here: docs/serve.md, "Three measured tuning choices"
        name = net.manifest.devices()[0].name
        net.attach_backend(name, backend)
        vm = None
        try:
            vm = VM(kernel, list(self.config.args), self.config.mem, modules, guest_cpl=self.config.guest_cpl)
            self.guest_mac = net.macs[name]
            self.switch = Switch(self.guest_ip.packed, self.guest_mac, self.guest_port, self.host_ip.packed, tap_mac)
            self.snapshot = boot_and_snapshot(vm, backend.fd, sock, self.switch)
        finally:
            if vm is not None:
                vm.close()
            else:
                backend.close()
            sock.close()
        written = sum(e - s for s, e in data_ranges(self.snapshot.mem_fd, 0, self.snapshot.size))
        self.log(f"snapshot taken after a warm-up connection: {self.snapshot.size >> 20} MiB guest, "
                 f"{written >> 10} KiB of it written")

    def _add_clone(self, index: int, cpus: set[int]) -> None:
        modules = default_modules(self.snapshot.manifest())
        net = self._net_module(modules)
        backend, sock = frame_pipe(f"clone{index}", MTU)
        net.attach_backend(net.manifest.devices()[0].name, backend)
        try:
            vm = VM.from_snapshot(self.snapshot, modules)
        except BaseException:
            sock.close()
            raise
        vm.core.enable_wake()
        vm.enable_stats()
        clone = Clone(index, vm, sock, self._clone_report, cpus, backend.fd)
        self.clones.append(clone)
        self.idle.append(clone)
        self.sel.register(sock, READ, ("clone", clone))

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
                if conn.clone is not None:
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
            conn = Connection(client, time.perf_counter(), time.monotonic() + self.config.deadline_s)
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
        self.sel.register(up, READ | WRITE, ("upstream", conn))

    # --- relaying ------------------------------------------------------------------------------
    def _relay(self, conn: Connection, events: int, client_side: bool) -> None:
        if conn.finished:
            return                     # an event from the same batch, for a connection already over
        outcome = relay.pump(conn, events, client_side)
        if outcome is not None:
            self._finish(conn, outcome)
            return
        self._watch(conn.client, relay.interest(conn, True), ("client", conn))
        self._watch(conn.upstream, relay.interest(conn, False), ("upstream", conn))

    def _watch(self, sock: socket.socket, events: int, data) -> None:
        """Wait for `events` on `sock` (none: not at all)."""
        try:
            key = self.sel.get_key(sock)
        except KeyError:
            key = None
        if key is None:
            if events:
                self.sel.register(sock, events, data)
        elif not events:
            self.sel.unregister(sock)
        elif key.events != events:
            self.sel.modify(sock, events, data)

    def _finish(self, conn: Connection, outcome: str, stop_clone: bool = True) -> None:
        """Close the connection's sockets and stop its clone (unless its run is over already:
        a stop then would end the clone's next run); counted once."""
        if conn.finished:
            return
        client, up = conn.client, conn.upstream
        conn.client = conn.upstream = None
        for s in (client, up):
            if s is None:
                continue
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
                conn.clone.vm.request_stop()
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
                raise ServeError(f"TAP {self.tap_name}: {os.strerror(e.errno)}") from None
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

    # --- teardown ------------------------------------------------------------------------------
    def summary(self) -> str:
        """Counts, reset times and what clones keep, for the last line of `ukvm serve`."""
        c = self.counts
        text = (f"{c['ok']} requests served, {sum(v for k, v in c.items() if k.startswith('failure_'))} "
                f"clone failures, {c['rejected']} rejected")
        if self.reset_seconds:
            resets = sorted(self.reset_seconds)
            kept = sorted(clone.vm.pages_written * 4 for clone in self.clones) or [0]
            text += (f"; reset p50 {resets[len(resets) // 2] * 1e6:.0f} us, p99 "
                     f"{resets[int(len(resets) * 0.99)] * 1e6:.0f} us; each clone keeps {kept[len(kept) // 2]} KiB")
        return text

    def close(self) -> None:
        """Release everything this server made; safe after a failed start, and more than once."""
        for conn in list(self.by_port.values()) + list(self.waiting):
            self._finish(conn, "shutdown")
        for clone in self.clones:
            clone.stop()
        for clone in self.clones:
            if clone.thread.ident is not None:
                clone.thread.join(timeout=5)
            if clone.thread.is_alive():     # still inside the VM: leave it to the process's exit
                continue
            clone.vm.close()
            clone.sock.close()
        self.clones.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None
        for fd in (self.tap_fd, self.report_fd):
            if fd >= 0:
                os.close(fd)
        self.tap_fd = self.report_fd = -1
        self.sel.close()
