"""modules/net: network devices: --net options, NET_READ/NET_WRITE, POLL fds and the ring.

Frames move with one readv/write between a backend's fd (backend.py: a TAP, or a socket of
`ukvm serve`'s switch) and guest memory. When the shared ring is offered (ring.py) an I/O thread
serves it; the hypercall path always stays available, since guests that do not know the ring,
or find it not offered, use it.
"""
from __future__ import annotations

import os

from ukvm import hvt_abi as hvt
from ukvm.errors import HostIOError, UkvmError, UsageError
from ukvm.machine.manifest import MFT_DEV_NET_BASIC, Entry
from ukvm.modules import Module
from ukvm.options import DECLINE, NET, NET_MAC, BadValue, Option, choice
from ukvm.options import parse_mac as _parse_mac
from ukvm.modules.net.backend import NetBackend
from ukvm.machine.vcpu import host_emulates_cpl0

MAX_IFACE = 19     # longer --net values are cut, as upstream does


def parse_mac(text: str) -> bytes | None:
    """Six `:`-separated groups of one or two hex digits; None if it is not that."""
    try:
        return _parse_mac(text)
    except BadValue:
        return None


def ring_wanted(mode: str, guest_at_cpl3: bool) -> bool:
    """auto: offer the ring unless the guest's code runs at CPL0 on a host that emulates CPL0
    (kvm_pvm). There a guest's ring path, which spins and copies at CPL0, is slower than its
    hypercall path; at CPL3 the ring avoids exits that cost twice as much (docs/performance.md)."""
    if mode != "auto":
        return mode == "on"
    return guest_at_cpl3 or not host_emulates_cpl0()


class NetDevice:
    """A manifest entry with its backend; `fd` is the backend's, copied for the hot paths."""
    __slots__ = ("entry", "backend", "fd", "mtu")

    def __init__(self, entry: Entry, backend: NetBackend):
        self.entry, self.backend, self.fd, self.mtu = entry, backend, backend.fd, backend.mtu


def generated_mac() -> bytes:
    """Random, unicast (bit 0 clear), locally administered (bit 1 set)."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFE) | 0x02
    return bytes(mac)


class NetModule(Module):
    name = "net"
    options = (
        NET,
        NET_MAC,
        Option("net-ring", "offer the v0.12 shared ring; auto: on, except for guests whose code runs "
               "at CPL0 on a host that emulates CPL0 (kvm_pvm)", choice("auto", "on", "off"),
               metavar="auto|on|off", default="auto", on_error=DECLINE),
    )

    def __init__(self, manifest):
        super().__init__(manifest)
        self.devices: dict[str, NetDevice] = {}
        self.macs: dict[str, bytes] = {}
        self.by_handle: dict[int, NetDevice] = {}
        self.ring_mode = "auto"
        self.ring = None

    @property
    def needs_ring_area(self) -> bool:
        return bool(self.devices)

    # --- options -------------------------------------------------------------------------------
    def set_option(self, opt: str, name: str | None, value) -> bool:
        if opt == "net-ring":
            self.ring_mode = value
            return True
        if opt == "net-mac":
            if self._entry(name) is None:
                return False
            self.macs[name] = value
            return True
        if self._entry(name) is None:
            return False
        iface = value[:MAX_IFACE]
        try:
            self.attach(name, iface)
        except OSError as e:
            self.warn(f"Could not attach interface: {iface}: {os.strerror(e.errno)}")
            return False
        return True

    def _entry(self, name: str) -> Entry | None:
        entry = self.manifest.find(name, MFT_DEV_NET_BASIC)
        if entry is None:
            self.warn(f"Resource not declared in manifest: '{name}'")
        return entry

    def attach(self, name: str, iface: str, mac: bytes | None = None) -> None:
        """Back manifest entry `name` with TAP `iface`, or with an open TAP fd given as `@FD`."""
        self.attach_backend(name, NetBackend.tap(iface), mac)

    def attach_backend(self, name: str, backend: NetBackend, mac: bytes | None = None) -> None:
        entry = self.manifest.find(name, MFT_DEV_NET_BASIC)
        if entry is None:
            backend.close()
            raise UsageError(f"Resource not declared in manifest: '{name}'", show_usage=False)
        old = self.devices.pop(name, None)
        if old is not None:
            old.backend.close()
        self.devices[name] = NetDevice(entry, backend)
        if mac is not None:
            self.macs[name] = mac

    # --- set-up --------------------------------------------------------------------------------
    def setup(self, vm: VM) -> None:
        self.mem = vm.mem
        for name, dev in self.devices.items():
            mac = self.macs.get(name, bytes(6))
            if mac == bytes(6):
                mac = self.macs[name] = generated_mac()
            dev.entry.set_net(mac, min(dev.mtu, 0xFFFF), dev.fd)
            self.by_handle[dev.entry.index] = dev
            vm.core.add_pollfd(dev.fd, dev.entry.index)
        if not self.devices:
            return
        vm.hypercalls.register(hvt.HVT_HYPERCALL_NET_WRITE, self.hvt_hc_net_write)
        vm.hypercalls.register(hvt.HVT_HYPERCALL_NET_READ, self.hvt_hc_net_read)
        if ring_wanted(self.ring_mode, vm.guest_cpl == 3):
            from ukvm.modules.net.ring import start_ring
            self.ring = start_ring(vm.kvm, vm.vmfd, vm.mem, self.by_handle, vm.fail_from_thread, vm.warn)
            if self.ring is not None:
                vm.ring_gpa = self.ring.gpa
                vm.host_features |= hvt.HVT_FEATURE_RING_IO

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot_state(self) -> dict:
        return {name: {"mac": ":".join(f"{b:02x}" for b in self.macs[name]), "mtu": dev.mtu}
                for name, dev in self.devices.items()}

    def restore(self, vm: VM, state: dict) -> None:
        """The guest keeps the MAC and MTU it read at boot: reuse the MAC, insist on the MTU, and
        serve the ring exactly when the snapshot's guest was offered it."""
        for name, dev in self.devices.items():
            want = state.get(name)
            mac = parse_mac(want["mac"]) if isinstance(want, dict) and isinstance(want.get("mac"), str) else None
            if mac is None:
                raise UsageError(f"{name}: not a network device of the snapshot", show_usage=False)
            if dev.mtu != want.get("mtu"):
                raise UsageError(f"{name}: the snapshot's guest has MTU {want.get('mtu')}; "
                                 f"{dev.backend.name} has MTU {dev.mtu}", show_usage=False)
            self.macs[name] = mac
        self.ring_mode = "on" if vm.host_features & hvt.HVT_FEATURE_RING_IO else "off"
        self.setup(vm)
        if self.ring_mode == "on" and self.ring is None:
            raise UsageError("the snapshot's guest uses the network ring, which KVM cannot offer here",
                             show_usage=False)

    def quiesce(self, vm: VM) -> None:
        if self.ring is not None and self.ring.thread is not None:
            self.ring.pause()

    def on_reset(self, vm: VM) -> None:
        """Frames queued for the last run are not the next one's."""
        for dev in self.devices.values():
            while True:
                try:
                    os.read(dev.fd, 65536)
                except OSError:      # EAGAIN: empty
                    break
        if self.ring is not None:
            self.ring.start()

    # --- hypercalls ----------------------------------------------------------------------------
    # One frame per exit: the common path is a few locals and one system call (structs bound as
    # default arguments; docs/performance.md).
    def _decode(self, gpa: int, _arg=hvt.hvt_hc_net_io) -> tuple[NetDevice, int, int] | None:
        """(device, data, len) of a NET_READ/NET_WRITE, or None after storing EINVAL."""
        mem = self.mem
        handle, data, length, _ret = mem.unpack(_arg, gpa)
        mem.check_writable(gpa, _arg.size)
        dev = self.by_handle.get(handle & 0xFFFFFFFF)
        if dev is None:
            mem.pack(hvt.U32, gpa + hvt.HVT_NET_RET_OFFSET, hvt.SOLO5_R_EINVAL)
            return None
        return dev, data, length

    def hvt_hc_net_write(self, gpa: int, _ret=hvt.U32, _write=os.write) -> None:
        req = self._decode(gpa)
        if req is None:
            return
        dev, data, length = req
        mem = self.mem
        with mem.view(data, length) as frame:
            try:
                n = _write(dev.fd, frame)
            except OSError as e:
                raise HostIOError(f"Fatal error when writing: {os.strerror(e.errno)}", with_prog=False) from None
        if n != length:
            raise HostIOError(f"Fatal error: wrote only {n} out of {length} bytes", with_prog=False)
        mem.pack(_ret, gpa + hvt.HVT_NET_RET_OFFSET, hvt.SOLO5_R_OK)

    def hvt_hc_net_read(self, gpa: int, _ret=hvt.U32, _len_ret=hvt.HVT_NET_LEN_RET, _readv=os.readv) -> None:
        req = self._decode(gpa)
        if req is None:
            return
        dev, data, length = req
        mem = self.mem
        with mem.writable_view(data, length) as buf:
            try:
                n = _readv(dev.fd, [buf])
            except BlockingIOError:
                n = 0
            except OSError as e:
                raise HostIOError(f"Fatal error when reading: {os.strerror(e.errno)}", with_prog=False) from None
        if n == 0:
            mem.pack(_ret, gpa + hvt.HVT_NET_RET_OFFSET, hvt.SOLO5_R_AGAIN)
        else:
            mem.pack(_len_ret, gpa + 16, n, hvt.SOLO5_R_OK)

    # --- teardown ------------------------------------------------------------------------------
    def on_halt(self, vm: VM) -> None:
        if self.ring is not None:
            try:       # writes are queued without waiting: the guest may halt right after its last
                if not self.ring.failed:         # else its error is what the run reports
                    self.ring.pause()
            except (UkvmError, OSError) as e:    # the guest's status stands; the loss is said
                self.warn(f"frames queued before the guest halted were not all sent: {e}")
            finally:
                self.ring.stop()

    def sandbox_needs(self, vm: VM) -> Needs:
        """Frames in and out (hypercalls, reset's drain, or the ring thread and its eventfd)."""
        from ukvm.sandbox.needs import Needs
        fds = {dev.fd for dev in self.devices.values()}
        needs = Needs()
        if self.ring is not None:
            fds.add(self.ring.efd)
            needs.allow("pselect6")                 # the ring thread's bounded wait on its eventfd
        return needs.on_fds(("read", "readv", "write"), fds)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.stop()
            self.ring = None
        for dev in self.devices.values():
            dev.backend.close()
        self.devices.clear()
        self.by_handle.clear()
