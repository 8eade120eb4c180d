"""serve: `ukvm serve`: a fresh clone of one unikernel for every TCP connection (docs/serve.md).

Theory of operation. The unikernel boots once, on a NIC whose frames go through the switch, and
runs until it first waits for input with none pending (POLL with nothing readable: "ready");
there it is snapshotted and the boot VM closed. A pool of clones is made from the snapshot, each
with a vCPU thread that runs its VM for one connection at a time and resets it afterwards.

The main thread runs one event loop (epoll) over: the listening socket, the TAP, each clone's
end of the switch, the two sockets of every connection, and an eventfd through which clone
threads report that a run ended. For a connection accepted on --listen it takes an idle clone,
opens a TCP connection from the host side of the TAP to the guest's IP and port, and relays
bytes between the two. The guest's own TCP/IP stack talks to the host's end to end.

Every clone has the same MAC and IP (they are one snapshot), so the switch routes frames by the
host side's port: a frame from the TAP to the guest's port goes to the clone serving the
connection that owns the frame's source port. The switch answers ARP both ways itself (the
guest's MAC to the host, the TAP's MAC to a clone), so a clone's first frame needs no round
trip, and it lets a clone send only TCP from the guest's port to its own connection: a clone
cannot reach another clone's connection or anything else on the host.

A run ends when the connection ends (the clone is stopped in POLL, woken by its eventfd), when
its deadline passes (a spinning guest is stopped by immediate_exit and a signal), or when the
guest halts or faults; in every case the clone is reset and goes back to the pool, and only
that connection is affected. SIGTERM stops accepting, lets the connections in flight finish
(bounded by their deadlines), and releases everything: clones, TAP, sockets, the snapshot.

A front end. May import machine, modules, sandbox; never cli or oci.
"""
from __future__ import annotations

import collections
import ipaddress
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from ukvm import hvt_abi as hvt
from ukvm.errors import UkvmError, UsageError
from ukvm.machine.exits import HYPERCALL_NAMES
from ukvm.machine.manifest import MFT_DEV_NET_BASIC
from ukvm.modules import default_modules
from ukvm.modules.net import NetModule
from ukvm.modules.net.backend import frame_pipe
from ukvm.machine.snapshot import data_ranges
from ukvm.machine.vm import VM, Kernel

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
BROADCAST = b"\xff" * 6
ARP_REQUEST = struct.Struct("!HHBBH6s4s6s4s")   # htype, ptype, hlen, plen, oper, sha, spa, tha, tpa
RELAY_CHUNK = 65536
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
DEFAULT_DEADLINE_S = 10.0
READY_TIMEOUT_S = 30.0
SWITCH_INTERVAL_S = 0.0005
DRAIN_GRACE_S = 5.0


class ServeError(UkvmError):
    pass


class Clone:
    """One VM made from the snapshot, its switch socket and its vCPU thread.

    Between connections the clone is parked: its guest runs until its first POLL after the
    reset and waits there, so a connection's first frame finds it ready (docs/serve.md)."""

    def __init__(self, index: int, vm: VM, sock: socket.socket, report, cpus: set[int]):
        self.index = index
        self.cpus = cpus
        self.vm = vm
        self.sock = sock                 # the switch's end of the clone's NIC
        self.conn: Connection | None = None
        self.closing = False
        self._report = report
        self.thread = threading.Thread(target=self._work, name=f"ukvm-clone{index}", daemon=True)
        self.thread.start()

    def assign(self, conn: Connection) -> None:
        self.conn = conn
        self.vm.core.parked = False      # from now on its POLL timeouts are the guest's own

    def _work(self) -> None:
        """Run the guest until its run is ended (the connection is over, a deadline passed, the
        guest halted or faulted), reset it, report, and park it again."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        self.vm.core.parked = True
        while not self.closing:
            try:
                status = self.vm.run()
                outcome = ("stopped", None) if status is None else ("halt", status)
            except UkvmError as e:
                outcome = ("fault", str(e))
            if self.closing:
                return
            t0 = time.perf_counter()
            try:
                self.vm.reset()
                reset_s = time.perf_counter() - t0
            except UkvmError as e:      # a clone that cannot be reset leaves the pool
                self._report(self, ("broken", str(e)), 0.0)
                return
            self.vm.core.parked = True  # before the report: assign() may clear it at once
            self._report(self, outcome, reset_s)

    def stop(self) -> None:
        self.closing = True
        self.vm.request_stop()


class Connection:
    __slots__ = ("client", "upstream", "clone", "port", "deadline", "started", "to_guest", "to_client",
                 "client_eof", "guest_eof", "shut_upstream", "shut_client")

    def __init__(self, client: socket.socket, started: float, deadline: float):
        self.client = client
        self.upstream: socket.socket | None = None
        self.clone: Clone | None = None
        self.port = 0
        self.started = started
        self.deadline = deadline
        self.to_guest = bytearray()
        self.to_client = bytearray()
        self.client_eof = self.guest_eof = False
        self.shut_upstream = self.shut_client = False


class Metrics:
    """Prometheus metrics on a private registry; the per-hypercall exit counts are read from the
    clones' counters when scraped."""

    def __init__(self, server: Server, address: tuple[str, int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
        from prometheus_client.core import CounterMetricFamily
        self.registry = CollectorRegistry()
        self.requests = Counter("ukvm_requests", "Connections served, by outcome", ["outcome"],
                                registry=self.registry)
        self.latency = Histogram("ukvm_request_seconds", "Accept to close of a connection",
                                 buckets=(.0005, .001, .002, .003, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.resets = Counter("ukvm_resets", "Clone resets", registry=self.registry)
        self.reset_latency = Histogram("ukvm_reset_seconds", "Time of one clone reset",
                                       buckets=(25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3),
                                       registry=self.registry)
        self.in_use = Gauge("ukvm_clones_in_use", "Clones serving a connection", registry=self.registry)
        self.failures = Counter("ukvm_clone_failures", "Runs that did not end with the connection",
                                ["cause"], registry=self.registry)
        self.dropped = Counter("ukvm_switch_dropped_frames", "Frames the switch refused", ["source"],
                               registry=self.registry)

        class Exits:
            def collect(_self):
                family = CounterMetricFamily("ukvm_exits", "Hypercall exits of all clones", labels=["hypercall"])
                for nr, name in HYPERCALL_NAMES.items():
                    family.add_metric([name], sum(c.vm.stats.counts[nr] for c in server.clones))
                yield family
        self.registry.register(Exits())
        self.http, self.http_thread = start_http_server(address[1], address[0], registry=self.registry)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def default_host_ip(guest: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
    """The first address of the guest's /24 that is not the guest's."""
    network = ipaddress.IPv4Network(f"{guest}/24", strict=False)
    return ipaddress.IPv4Interface(f"{next(h for h in network.hosts() if h != guest)}/24")


def vcpu_cpus() -> set[int]:
    """The CPUs for clones' vCPU threads: all this process may use but the first, which is left to
    the event loop. A vCPU that moves between CPUs costs kvm_pvm a great deal (measured: 30% more
    CPU per request unpinned on 2 cores); an empty set (one CPU) means no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[1:]) if len(allowed) > 1 else set()


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}", show_usage=False)
    return host.strip("[]") or "0.0.0.0", int(port)


class Server:
    def __init__(self, kernel_path: str, args: list[str], *, listen: tuple[str, int], guest: tuple[str, int],
                 host_ip: str | None = None, mem: int = hvt.MEM_DEFAULT, pool: int = 4,
                 metrics: tuple[str, int] | None = None, deadline_s: float = DEFAULT_DEADLINE_S,
                 max_waiting: int = 256, tap_name: str | None = None, guest_cpl: str = "auto",
                 log=None):
        self.log = log or (lambda msg: print(f"ukvm serve: {msg}", file=sys.stderr, flush=True))
        try:
            self.guest_ip = ipaddress.IPv4Address(guest[0])
            net = ipaddress.IPv4Interface(host_ip) if host_ip else default_host_ip(self.guest_ip)
        except ValueError as e:
            raise UsageError(f"bad address: {e}", show_usage=False) from None
        if self.guest_ip not in net.network or self.guest_ip == net.ip:
            raise UsageError(f"--guest {self.guest_ip} must be another address in --host-ip's network {net.network}",
                             show_usage=False)
        if pool < 1:
            raise UsageError("--pool must be at least 1", show_usage=False)
        self.host_ip, self.prefixlen, self.guest_port = net.ip, net.network.prefixlen, guest[1]
        self.deadline_s, self.max_waiting = deadline_s, max_waiting
        self.clones: list[Clone] = []
        self.idle: collections.deque[Clone] = collections.deque()
        self.waiting: collections.deque[Connection] = collections.deque()
        self.by_port: dict[int, Connection] = {}
        self.by_fd: dict[int, tuple[str, object]] = {}
        self.reports: collections.deque = collections.deque()
        self.draining = self.drain_requested = False
        self.counts = collections.Counter()
        self.reset_seconds: collections.deque[float] = collections.deque(maxlen=100000)   # for bench/
        self.snapshot = None
        self.metrics: Metrics | None = None
        self.tap_fd = -1
        self.listener: socket.socket | None = None
        self.sel = selectors.EpollSelector()
        self.report_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self._start(kernel_path, args, listen, mem, pool, metrics, tap_name, guest_cpl)
        except BaseException:
            self.close()
            raise

    # --- start-up ------------------------------------------------------------------------------
    def _start(self, kernel_path, args, listen, mem, pool, metrics, tap_name, guest_cpl) -> None:
        from ukvm.modules.net.tap import create_tap
        # A clone's vCPU thread is stopped by a signal (VM.request_stop): it needs a handler,
        # installed before the threads start (only the main thread can install it).
        if threading.current_thread() is threading.main_thread() and not callable(signal.getsignal(signal.SIGUSR1)):
            signal.signal(signal.SIGUSR1, lambda *_: None)
        name = tap_name or f"ukvms{os.getpid() % 100000}"
        try:
            netmask = ipaddress.IPv4Network(f"0.0.0.0/{self.prefixlen}").netmask
            self.tap_fd, self.tap_mac = create_tap(name, self.host_ip.packed, netmask.packed)
        except OSError as e:
            raise ServeError(f"cannot create TAP {name}: {os.strerror(e.errno)}") from None
        self.tap_name = name
        self.mtu = 1500
        # Addresses first: a port in use is one line before anything boots.
        try:
            self.listener = socket.create_server(listen, backlog=1024)
        except OSError as e:
            raise ServeError(f"--listen {listen[0]}:{listen[1]}: {e.strerror or e}") from None
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        if metrics is not None:
            try:
                self.metrics = Metrics(self, metrics)
            except OSError as e:
                raise ServeError(f"--metrics {metrics[0]}:{metrics[1]}: {os.strerror(e.errno)}") from None
            self.metrics.in_use.set(0)
        kernel = Kernel(kernel_path)
        try:
            self.guest_mac = self._boot_and_snapshot(kernel, args, mem, guest_cpl)
        finally:
            kernel.close()
        for i in range(pool):
            self._add_clone(i)
        self.sel.register(self.listener, READ, ("listen", None))
        self.sel.register(self.tap_fd, READ, ("tap", None))
        self.sel.register(self.report_fd, READ, ("report", None))

    @staticmethod
    def _net_module(modules) -> NetModule:
        """The net module, once the manifest is known to declare exactly one NIC and nothing else."""
        entries = modules[0].manifest.devices()
        if len(entries) != 1 or entries[0].type != MFT_DEV_NET_BASIC:
            raise ServeError("the unikernel must declare exactly one device, of type NET_BASIC")
        return next(m for m in modules if isinstance(m, NetModule))

    def _boot_and_snapshot(self, kernel: Kernel, args: list[str], mem: int, guest_cpl: str) -> bytes:
        """Boot on a switch port of our own and snapshot at the first idle POLL."""
        modules = default_modules(kernel.manifest())
        net = self._net_module(modules)
        backend, sock = frame_pipe("serve", self.mtu)
        net.ring_mode = "off"   # measured slower here: docs/serve.md, "Why hypercalls, not the ring"
        net.attach_backend(net.manifest.devices()[0].name, backend)
        vm = VM(kernel, args, mem, modules, guest_cpl=guest_cpl)
        ready = []

        def on_idle() -> None:
            ready.append(True)
            vm.request_stop()
        try:
            vm.core.on_idle = on_idle
            timer = threading.Timer(READY_TIMEOUT_S, vm.request_stop)
            timer.start()
            try:
                status = vm.run()
            finally:
                timer.cancel()
            vm.core.on_idle = None
            if status is not None:
                raise ServeError(f"the unikernel exited with status {status} before it was ready")
            if not ready:
                raise ServeError(f"the unikernel did not wait for network input within {READY_TIMEOUT_S:.0f} s")
            self.snapshot = vm.snapshot()
            mac = net.macs[net.manifest.devices()[0].name]
        finally:
            vm.close()
            sock.close()
        written = sum(e - s for s, e in data_ranges(self.snapshot.mem_fd, 0, self.snapshot.size))
        self.log(f"snapshot taken: {self.snapshot.size >> 20} MiB guest, {written >> 10} KiB of it written")
        return mac

    def _add_clone(self, index: int) -> None:
        modules = default_modules(self.snapshot.manifest())
        net = self._net_module(modules)
        backend, sock = frame_pipe(f"clone{index}", self.mtu)
        net.attach_backend(net.manifest.devices()[0].name, backend)
        vm = VM.from_snapshot(self.snapshot, modules)
        vm.core.enable_wake()
        vm.enable_stats()
        clone = Clone(index, vm, sock, self._clone_report, vcpu_cpus())
        self.clones.append(clone)
        self.idle.append(clone)
        self.sel.register(sock, READ, ("clone", clone))

    # --- the event loop ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not (self.draining and not self.by_port and not self.waiting and len(self.idle) == len(self.clones)):
            if self.drain_requested:
                self.drain()
            if self.draining and time.monotonic() > self.drain_deadline:
                busy = len(self.clones) - len(self.idle)
                self.log(f"drain: {busy} clone(s) did not come back within {DRAIN_GRACE_S:.0f} s after the deadline")
                return
            timeout = self._expire(time.monotonic())
            for key, events in self.sel.select(timeout):
                kind, obj = key.data
                if kind == "tap":
                    self._from_tap()
                elif kind == "clone":
                    self._from_clone(obj)
                elif kind == "listen":
                    self._accept()
                elif kind == "report":
                    self._reports()
                elif kind in ("client", "upstream"):
                    self._relay(obj, events, kind == "client")

    def request_drain(self) -> None:
        """From a signal handler: drain at the next turn of the loop."""
        self.drain_requested = True
        os.eventfd_write(self.report_fd, 1)

    def drain(self) -> None:
        """Stop accepting; serve_forever returns once the connections in flight are done."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = time.monotonic() + self.deadline_s + DRAIN_GRACE_S
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
        for _ in range(64):
            try:
                client, _addr = self.listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            conn = Connection(client, time.perf_counter(), now + self.deadline_s)
            if self.idle:
                self._assign(conn, self.idle.popleft())
            elif len(self.waiting) < self.max_waiting:
                self.waiting.append(conn)
            else:
                self._finish(conn, "rejected")

    def _assign(self, conn: Connection, clone: Clone) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.bind((str(self.host_ip), 0))
        conn.port = up.getsockname()[1]
        conn.upstream, conn.clone = up, clone
        self.by_port[conn.port] = conn
        clone.assign(conn)
        if self.metrics:
            self.metrics.in_use.inc()
        try:
            up.connect((str(self.guest_ip), self.guest_port))
        except BlockingIOError:
            pass
        self.sel.register(conn.client, READ, ("client", conn))
        self.sel.register(up, READ | WRITE, ("upstream", conn))

    # --- relaying ------------------------------------------------------------------------------
    def _relay(self, conn: Connection, events: int, client_side: bool) -> None:
        """Move bytes for one socket of a connection: what it sends is queued for the other
        side, what the other side sent is written to it."""
        sock = conn.client if client_side else conn.upstream
        inbox, outbox = (conn.to_guest, conn.to_client) if client_side else (conn.to_client, conn.to_guest)
        eof = "client_eof" if client_side else "guest_eof"
        error = "client_error" if client_side else "guest_error"
        if events & READ and not getattr(conn, eof):
            data = _recv(sock)
            if data is None:
                return self._finish(conn, error)
            if data is not AGAIN:
                inbox += data
                setattr(conn, eof, not data)
        if events & WRITE and outbox:
            if not _send(sock, outbox):
                return self._finish(conn, error)
        self._progress(conn)

    def _progress(self, conn: Connection) -> None:
        """Shut down each direction once drained; the connection is done when both are."""
        if conn.client is None:
            return
        if conn.client_eof and not conn.to_guest and not conn.shut_upstream:
            conn.shut_upstream = _shutdown(conn.upstream)
        if conn.guest_eof and not conn.to_client and not conn.shut_client:
            conn.shut_client = _shutdown(conn.client)
        if conn.guest_eof and not conn.to_client:
            return self._finish(conn, "ok")      # the answer is complete; the client may go on sending
        self._watch(conn.client, (0 if conn.client_eof else READ) | (WRITE if conn.to_client else 0), ("client", conn))
        self._watch(conn.upstream, (0 if conn.guest_eof else READ) | (WRITE if conn.to_guest else 0), ("upstream", conn))

    def _watch(self, sock: socket.socket, events: int, data) -> None:
        """Wait for `events` on `sock` (none: not at all; EOF is level-triggered)."""
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

    def _finish(self, conn: Connection, outcome: str) -> None:
        """Close the connection's sockets and stop its clone; counted once."""
        if conn.client is None:
            return
        for s in (conn.client, conn.upstream):
            if s is None:
                continue
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if s is conn.upstream:     # reset, not FIN: the clone is gone, nothing to wait for
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        conn.client = conn.upstream = None
        self.counts[outcome] += 1
        if self.metrics:
            self.metrics.requests.labels(outcome).inc()
            if outcome == "ok":
                self.metrics.latency.observe(time.perf_counter() - conn.started)
        if conn.clone is not None:
            self.by_port.pop(conn.port, None)
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

    # --- clone runs ----------------------------------------------------------------------------
    def _clone_report(self, clone: Clone, outcome: tuple, reset_s: float) -> None:
        """From a vCPU thread: its run ended and the clone was reset (or is broken)."""
        self.reports.append((clone, outcome, reset_s))
        os.eventfd_write(self.report_fd, 1)

    def _reports(self) -> None:
        try:
            os.eventfd_read(self.report_fd)
        except BlockingIOError:
            pass
        while self.reports:
            clone, (kind, detail), reset_s = self.reports.popleft()
            conn, clone.conn = clone.conn, None
            if conn is None and kind == "stopped":
                continue            # stopped while parked: nothing to account for
            if kind in ("halt", "fault", "broken"):
                self._count_failure({"halt": "exit", "fault": "fault", "broken": "broken"}[kind])
                self.log(f"clone {clone.index}: " + (f"guest exited with status {detail}" if kind == "halt" else detail))
            if conn is not None and conn.client is not None:
                self._finish(conn, "guest_" + kind)
            if self.metrics and conn is not None:
                self.metrics.in_use.dec()
            if kind == "broken":
                self.sel.unregister(clone.sock)
                self.clones.remove(clone)
                clone.vm.close()
                clone.sock.close()
                if not self.clones:
                    raise ServeError("every clone failed to reset")
                continue
            self.counts["resets"] += 1
            self.reset_seconds.append(reset_s)
            if self.metrics:
                self.metrics.resets.inc()
                self.metrics.reset_latency.observe(reset_s)
            if clone not in self.idle:
                self.idle.append(clone)
            while self.waiting and self.idle:
                self._assign(self.waiting.popleft(), self.idle.popleft())

    # --- the switch ----------------------------------------------------------------------------
    def _from_tap(self) -> None:
        for _ in range(256):
            try:
                frame = os.read(self.tap_fd, 65536)
            except BlockingIOError:
                return
            if len(frame) < 34 or frame[:6] not in (self.guest_mac, BROADCAST):
                continue
            ethertype = frame[12] << 8 | frame[13]
            if ethertype == ETH_P_ARP:
                self._answer_arp(frame, self.guest_ip.packed, self.guest_mac, lambda f: os.write(self.tap_fd, f))
                continue
            conn = None
            if ethertype == ETH_P_IP and frame[23] == 6 and frame[30:34] == self.guest_ip.packed:
                l4 = 14 + (frame[14] & 0xF) * 4
                if len(frame) >= l4 + 4 and frame[l4 + 2] << 8 | frame[l4 + 3] == self.guest_port:
                    conn = self.by_port.get(frame[l4] << 8 | frame[l4 + 1])
            if conn is None or conn.clone is None:
                self._dropped("tap")
                continue
            try:
                conn.clone.sock.send(frame)
            except OSError:          # its queue is full: TCP retransmits
                self._dropped("tap")

    def _from_clone(self, clone: Clone) -> None:
        for _ in range(256):
            try:
                frame = clone.sock.recv(65536)
            except BlockingIOError:
                return
            conn = clone.conn
            if len(frame) < 34 or conn is None or frame[6:12] != self.guest_mac:
                self._dropped("clone")
                continue
            ethertype = frame[12] << 8 | frame[13]
            if ethertype == ETH_P_ARP:
                self._answer_arp(frame, None, self.tap_mac, clone.sock.send)
                continue
            ok = False
            if ethertype == ETH_P_IP and frame[23] == 6 and frame[26:30] == self.guest_ip.packed \
                    and frame[30:34] == self.host_ip.packed:
                l4 = 14 + (frame[14] & 0xF) * 4
                ok = len(frame) >= l4 + 4 and frame[l4] << 8 | frame[l4 + 1] == self.guest_port \
                    and frame[l4 + 2] << 8 | frame[l4 + 3] == conn.port
            if not ok:
                self._dropped("clone")
                continue
            try:
                os.write(self.tap_fd, frame)
            except OSError:
                self._dropped("clone")

    def _answer_arp(self, frame: bytes, only_for: bytes | None, mac: bytes, send) -> None:
        """Answer an ARP request (for `only_for`, or for any address) with `mac`."""
        if len(frame) < 14 + ARP_REQUEST.size:
            return
        htype, ptype, hlen, plen, oper, sha, spa, _tha, tpa = ARP_REQUEST.unpack_from(frame, 14)
        if (htype, ptype, hlen, plen, oper) != (1, ETH_P_IP, 6, 4, 1) or (only_for is not None and tpa != only_for):
            return
        reply = sha + mac + struct.pack("!H", ETH_P_ARP) + ARP_REQUEST.pack(1, ETH_P_IP, 6, 4, 2, mac, tpa, sha, spa)
        try:
            send(reply)
        except OSError:
            pass

    def _dropped(self, source: str) -> None:
        self.counts[f"dropped_{source}"] += 1
        if self.metrics:
            self.metrics.dropped.labels(source).inc()

    # --- teardown ------------------------------------------------------------------------------
    def summary(self) -> str:
        """Counts, reset times and what clones keep, for the last line of `ukvm serve`."""
        c = self.counts
        text = (f"{c['ok']} requests served, {sum(v for k, v in c.items() if k.startswith('failure_'))} "
                f"clone failures, {c['rejected']} rejected")
        if self.reset_seconds:
            resets = sorted(self.reset_seconds)
            kept = sorted(clone.vm.pages_written * 4 for clone in self.clones)
            text += (f"; reset p50 {resets[len(resets) // 2] * 1e6:.0f} us, p99 "
                     f"{resets[int(len(resets) * 0.99)] * 1e6:.0f} us; each clone keeps {kept[len(kept) // 2]} KiB")
        return text

    def close(self) -> None:
        """Release everything this server made; safe after a failed start."""
        for conn in list(self.by_port.values()) + list(self.waiting):
            self._finish(conn, "shutdown")
        for clone in self.clones:
            clone.stop()
        for clone in self.clones:
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


AGAIN = object()


def _recv(s: socket.socket):
    """Bytes read (b"" at EOF), AGAIN when there are none yet, None on a connection error."""
    try:
        return s.recv(RELAY_CHUNK)
    except BlockingIOError:
        return AGAIN
    except OSError:
        return None


def _send(s: socket.socket, buf: bytearray) -> bool:
    try:
        n = s.send(buf)
    except BlockingIOError:
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


SERVE_USAGE = """usage: ukvm serve [--mem=MB] [--pool=N] --listen=HOST:PORT --guest=IP:PORT [--host-ip=IP/PREFIX]
                  [--metrics=HOST:PORT] [--deadline=SECONDS] [--max-waiting=N] [--tap=NAME] [--] APP.hvt [ARGS]
Serve each TCP connection accepted on --listen with a fresh copy-on-write clone of APP, snapshotted
when it first waits for network input. APP declares one NET_BASIC device and listens on IP:PORT;
ARGS are its command line. A TAP (--tap, default ukvms<pid>) with --host-ip (default: the first
other address of the guest's /24) is created for the guests and removed at exit.
  --pool=N         clones serving at once (default 4); more connections wait, at most --max-waiting (256)
  --deadline=S     a connection (waiting included) ends after S seconds (default 10)
  --metrics=H:P    Prometheus metrics at http://H:P/metrics"""


def serve_main(argv: list[str]) -> int:
    """`ukvm serve ...`; returns the exit status (0 after a drain on SIGTERM or SIGINT)."""
    from ukvm.cli import parse_mem
    err = sys.stderr
    opts: dict[str, str] = {}
    rest: list[str] = []
    try:
        for i, arg in enumerate(argv):
            if arg in ("-h", "--help"):
                print(SERVE_USAGE, file=err)
                return 0
            if arg == "--" or not arg.startswith("-"):
                rest = argv[i + 1:] if arg == "--" else argv[i:]
                break
            name, eq, value = arg[2:].partition("=")
            if not eq or name not in ("mem", "pool", "listen", "guest", "host-ip", "metrics", "deadline",
                                      "max-waiting", "tap", "x-guest-cpl"):
                raise UsageError(f"invalid option: `{arg}'")
            opts[name] = value
        if not rest:
            raise UsageError("missing APP.hvt")
        for required in ("listen", "guest"):
            if required not in opts:
                raise UsageError(f"--{required} is required")
        for name in ("pool", "max-waiting"):
            if name in opts and not opts[name].isdigit():
                raise UsageError(f"--{name}: expected a number, got {opts[name]!r}")
        try:
            deadline = float(opts.get("deadline", DEFAULT_DEADLINE_S))
        except ValueError:
            raise UsageError(f"--deadline: expected seconds, got {opts['deadline']!r}") from None
        server = Server(
            rest[0], rest[1:], listen=parse_hostport(opts["listen"], "--listen"),
            guest=parse_hostport(opts["guest"], "--guest"), host_ip=opts.get("host-ip"),
            mem=parse_mem(opts["mem"]) if "mem" in opts else hvt.MEM_DEFAULT,
            pool=int(opts.get("pool", 4)), deadline_s=deadline,
            metrics=parse_hostport(opts["metrics"], "--metrics") if "metrics" in opts else None,
            max_waiting=int(opts.get("max-waiting", 256)), tap_name=opts.get("tap"),
            guest_cpl=opts.get("x-guest-cpl", "auto"))
    except UsageError as e:
        print(f"ukvm serve: {e}", file=err)
        if e.show_usage:
            print(SERVE_USAGE, file=err)
        return 2
    except UkvmError as e:
        print(f"ukvm serve: {e}", file=err)
        return 1
    # Every vCPU exit needs the GIL back; with the default 5 ms switch interval a busy event loop
    # made exits and resets wait (measured here: reset p50 310 -> 170 us, 16 connections at once
    # 420 -> 530 requests/s at 0.5 ms).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    signal.signal(signal.SIGTERM, lambda *_: server.request_drain())
    signal.signal(signal.SIGINT, lambda *_: server.request_drain())
    host, port = server.address[:2]
    print(f"ukvm serve: listening on {host}:{port}, guest {server.guest_ip}:{server.guest_port} "
          f"on {server.tap_name}, {len(server.clones)} clones", file=err, flush=True)
    try:
        server.serve_forever()
        summary = server.summary()
    except UkvmError as e:
        print(f"ukvm serve: {e}", file=err)
        return 1
    finally:
        server.close()
    print(f"ukvm serve: drained: {summary}", file=err, flush=True)
    return 0
