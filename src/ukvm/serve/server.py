"""serve/server.py: `ukvm serve`'s Server: its set-up (start), its teardown (close); the event
loop it inherits (serve_forever) is loop.py's.

start() makes everything the loop will ever use: the TAP, the listening and metrics sockets, the
snapshot (warmup.py) and the clones with their KVM objects. serve_forever() then only accepts,
connects to the guest through the TAP, relays and switches: it opens no file and creates no KVM
object, so the process can be confined between the two (the sandbox's one call, serve_main).
"""
from __future__ import annotations

import array
import collections
import os
import selectors
import signal
import socket
import threading

from ukvm.errors import UkvmError
from ukvm.hvt_abi import HYPERCALL_NAMES
from ukvm.machine.manifest import MFT_DEV_NET_BASIC
from ukvm.machine.snapshot import data_ranges
from ukvm.machine.vm import VM, Kernel
from ukvm.modules import default_modules
from ukvm.modules.net import NetModule
from ukvm.modules.net.backend import frame_pipe
from ukvm.serve.config import ServeConfig, local_addresses, parse_routes, route_clash
from ukvm.serve.loop import EventLoop
from ukvm.serve.pool import Clone
from ukvm.serve.relay import READ, Connection
from ukvm.serve.switch import Switch
from ukvm.serve.warmup import READY_TIMEOUT_S, boot_and_snapshot

MTU = 1500
RESET_SAMPLES = 20000


class Samples:
    """The last `size` values in a buffer allocated once: recording one allocates nothing, so a
    long-running server does not grow with its request count."""

    def __init__(self, size: int):
        self.buf = array.array("d", bytes(8 * size))
        self.count = 0

    def append(self, value: float) -> None:
        self.buf[self.count % len(self.buf)] = value
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, len(self.buf))

    def values(self) -> array.array:
        return self.buf[:len(self)]


class ServeError(UkvmError):
    pass


def core_name(clone: Clone) -> str:
    """A crashed connection's core: named by the server's pid and the connection's number."""
    conn = clone.conn
    return f"core.ukvm-serve.{os.getpid()}.conn{conn.number if conn is not None else 0}"


def vcpu_cpus() -> set[int]:
    """The CPUs for clones' vCPU threads: all this process may use but the first, which is left to
    the event loop. A vCPU that moves between CPUs costs kvm_pvm a great deal (measured: 30% more
    CPU per request unpinned on 2 cores); an empty set (one CPU) means no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[1:]) if len(allowed) > 1 else set()


class Server(EventLoop):
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
        self.accepted = 0                      # connections accepted: each one's number
        self.cores = None                      # --dumpcore: the PerMinute bound the clones share
        self.trace_fd = -1                     # --trace: the file the clones' tracers share
        self.retired_exits = collections.Counter()     # exits of clones that left the pool
        self.reset_seconds = Samples(RESET_SAMPLES)      # for the summary line (bench/)
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
                self.metrics = Metrics(self.exit_counts, cfg.metrics)
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
            try:
                with open("/proc/net/fib_trie") as f:
                    ours = local_addresses(f.read())
            except OSError:
                ours = set()
            if str(self.host_ip) in ours:
                clash = (f"--host-ip {self.host_ip} is already an address of this host: choose a free network "
                         f"with --host-ip=IP/PREFIX and --guest=IP:PORT in it")
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
        """Boot on a switch port of our own, warm it up, snapshot it (warmup.py); in a child
        process confined like serve itself (sandbox/confined_boot.py)."""
        from ukvm.modules.net import generated_mac
        from ukvm.sandbox.confined_boot import boot_confined
        self.guest_mac = generated_mac()
        self.switch = Switch(self.guest_ip.packed, self.guest_mac, self.guest_port, self.host_ip.packed, tap_mac)
        self.snapshot = boot_confined(lambda confine: self._boot_and_snapshot(kernel, confine), self.config.user,
                                      not self.config.no_sandbox, 3 * READY_TIMEOUT_S)
        snap = self.snapshot
        written = sum(e - s for s, e in data_ranges(snap.mem_fd, snap.mem_offset, snap.size))
        self.log(f"snapshot taken after a warm-up connection: {snap.size >> 20} MiB guest, "
                 f"{written >> 10} KiB of it written")

    def _boot_and_snapshot(self, kernel: Kernel, confine):
        """Make the boot VM, have it confined (`confine`), warm it up and snapshot it."""
        from ukvm.sandbox.needs import Needs
        modules = default_modules(kernel.manifest())
        net = self._net_module(modules)
        backend, sock = frame_pipe("serve", MTU)
        net.ring_mode = "off"   # measured slower here: docs/serve.md, "Three measured tuning choices"
        name = net.manifest.devices()[0].name
        net.attach_backend(name, backend, mac=self.guest_mac)
        vm = None
        try:
            vm = VM(kernel, list(self.config.args), self.config.mem, modules, guest_cpl=self.config.guest_cpl)
            confine(vm, Needs().on_fds(("sendto", "recvfrom"), {sock.fileno()}))     # the warm-up's end
            return boot_and_snapshot(vm, backend.fd, sock, self.switch)
        finally:
            if vm is not None:
                vm.close()
            else:
                backend.close()
            sock.close()

    def _add_clone(self, index: int, cpus: set[int]) -> None:
        modules = default_modules(self.snapshot.manifest())
        net = self._net_module(modules)
        dump = self._dumpcore(modules)
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
        if dump is not None:
            dump.name_core = lambda: core_name(clone)
        if self.config.trace is not None:
            self._trace(clone, modules)
        self.clones.append(clone)
        self.idle.append(clone)
        self.sel.register(sock, READ, ("clone", clone))

    def _dumpcore(self, modules):
        """--dumpcore: the clone's dumpcore module writes into DIR (its directory is opened when
        the clone is made, before the sandbox), under the shared per-minute bound."""
        if self.config.dumpcore is None:
            return None
        from ukvm.modules.dumpcore import DumpcoreModule, PerMinute
        if self.cores is None:
            self.cores = PerMinute(self.config.dumpcore_per_minute)
        dump = next(m for m in modules if isinstance(m, DumpcoreModule))
        dump.dir = self.config.dumpcore
        dump.may_dump = self.cores.take
        dump.warn = lambda msg: self.log(msg)
        return dump

    def _trace(self, clone: Clone, modules) -> None:
        """--trace: the clone traces one connection in --trace-every into the shared file, opened
        once now (before the sandbox); the clone's trace module declares the descriptor."""
        from ukvm.modules.trace import ConnectionTracer, TraceModule, open_trace
        if self.trace_fd < 0:
            self.trace_fd = open_trace(self.config.trace)
        next(m for m in modules if isinstance(m, TraceModule)).fd = self.trace_fd
        clone.on_assign = ConnectionTracer(clone.vm, self.trace_fd, self.config.trace_every).assign

    def exit_counts(self) -> dict[int, int]:
        """Hypercall exits of all clones, those that left the pool included (a counter never
        goes down). Called from the metrics thread: reads only."""
        counts = collections.Counter(self.retired_exits)
        for clone in list(self.clones):
            stats = clone.vm.stats
            for nr in HYPERCALL_NAMES:
                counts[nr] += stats.counts[nr]
        return counts

    # --- teardown ------------------------------------------------------------------------------
    def summary(self) -> str:
        """Counts, reset times and what clones keep, for the last line of `ukvm serve`."""
        c = self.counts
        text = (f"{c['ok']} requests served, {sum(v for k, v in c.items() if k.startswith('failure_'))} "
                f"clone failures, {c['rejected']} rejected")
        if len(self.reset_seconds):
            resets = sorted(self.reset_seconds.values())
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
        for fd in (self.tap_fd, self.report_fd, self.trace_fd if self.trace_fd > 2 else -1):
            if fd >= 0:
                os.close(fd)
        self.tap_fd = self.report_fd = self.trace_fd = -1
        self.sel.close()
