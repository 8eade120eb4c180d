"""modules/net/ring.py: the v0.12 shared network ring (hvt-abi.md section 9), served by a host I/O thread.

Theory of operation: the ring (49280 bytes) sits in the top 2 MiB of the allocation, above the
range hypercall pointers may reach. The guest produces entries (ent_tail) and consumes commits
(com_head); this thread consumes entries (ent_head) and produces commits (com_tail). Writes are
fire-and-forget, reads are answered with a commit while the guest spins inside KVM_RUN, which
is why a thread other than the vCPU thread must serve the ring (KVM_RUN releases the GIL).

When it finds nothing to do the thread sets needs_kick, issues a full barrier, looks once more
and then sleeps on an eventfd that KVM signals when the guest writes port 0x600 (ioeventfd, no
exit to user space). Python has no mfence; taking and releasing an uncontended lock executes a
locked instruction, which is a full barrier on x86. The sleep is also bounded, so a lost kick
would cost latency, never a hang. Fatal errors (a bad guest pointer, a TAP write failure) are
handed to the VM, which stops the vCPU and reports them like any other fatal error.
"""
from __future__ import annotations

import os
import select
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault, HostIOError, KvmError, UkvmError
from ukvm.kvm import abi
from ukvm.kvm.ioctls import Kvm, VmFd
from ukvm.machine.memory import GuestMemory

if TYPE_CHECKING:
    from ukvm.modules.net import NetDevice

HVT_RING_SIZE = 1024
HVT_RING_MASK = HVT_RING_SIZE - 1
HVT_RING_KICK_PORT = 0x600
RING_OP_NET_WRITE = 1
RING_OP_NET_READ = 2
# Control words, as indices of 32-bit words: the guest reads them while the host writes them, so
# each is stored with one aligned 32-bit store through a memoryview cast to "I". struct's "<I"
# stores byte by byte, and a guest running natively (CPL3) saw ent_head torn across a carry
# (0x3ff -> 0x400 read as 0x000) and failed its ring-full assertion.
CTL_ENT_TAIL = 0
CTL_COM_HEAD = 1
CTL_ENT_HEAD = 16
CTL_COM_TAIL = 17
CTL_NEEDS_KICK = 18
CTL_WORDS = 32
OFF_ENTRIES = 128
OFF_COMMITS = 128 + 32 * HVT_RING_SIZE
RING_ENTRY = struct.Struct("<IIQII8x")   # operation, handle, data, len, id
RING_COMMIT = struct.Struct("<IiI")      # id, ret, len (reserved word not written)
IDLE_CHECKS = 64                         # cheap re-checks before arming the kick
MAX_SLEEP_S = 0.05


class RingServer:
    """Serves the ring at `mem.limit` for `devices` (by handle); `efd` is the kick eventfd.

    Errors go to `on_error` (the VM's fail_from_thread). Without start() nothing runs, which lets
    tests drive _process() directly against plain guest memory."""

    def __init__(self, mem: GuestMemory, devices: dict[int, NetDevice], efd: int,
                 on_error: Callable[[UkvmError], None]):
        self.mem = mem
        self.devices = devices
        self.gpa = mem.limit
        self.efd = efd
        self.on_error = on_error
        self.failed = False              # its thread reported an error (its last batch may be half sent)
        self.stopping = False
        self._fence_lock = threading.Lock()
        self.ring = mem.tender_area(self.gpa, hvt.HVT_RING_STRUCT_SIZE)
        self.ctl = self.ring[:4 * CTL_WORDS].cast("I")
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="ukvm-ring", daemon=True)
        self.thread.start()

    def pause(self) -> None:
        """Serve what the guest queued (a stopped guest queues nothing more), then stop the
        thread; start() resumes from the ring's state in guest memory (snapshots, resets)."""
        self._stop_thread()
        tail = self.ctl[CTL_ENT_TAIL]
        head = self.ctl[CTL_ENT_HEAD]
        if tail != head and (tail - head) & 0xFFFFFFFF <= HVT_RING_SIZE:
            self._process(head, tail)
        self.ctl[CTL_NEEDS_KICK] = 0

    def _stop_thread(self) -> None:
        self.stopping = True
        if self.thread is not None:
            os.eventfd_write(self.efd, 1)
            if self.thread is not threading.current_thread():
                self.thread.join()
            self.thread = None

    def _fence(self) -> None:
        self._fence_lock.acquire()
        self._fence_lock.release()

    def _serve(self) -> None:
        try:
            self._loop()
        except UkvmError as e:
            self.failed = True
            self.on_error(e)
        except OSError as e:
            self.failed = True
            self.on_error(HostIOError(f"Ring I/O thread failed: {os.strerror(e.errno)}"))

    def _loop(self) -> None:
        ctl = self.ctl
        head = ctl[CTL_ENT_HEAD]
        while not self.stopping:
            tail = ctl[CTL_ENT_TAIL]
            if tail == head:
                tail = self._wait(head)
                if tail is None:
                    continue
            if (tail - head) & 0xFFFFFFFF > HVT_RING_SIZE:
                # More entries than slots: the guest broke the protocol; stop instead of spinning.
                raise GuestFault(f"Invalid guest ring state: ent_tail={tail}, ent_head={head}")
            head = self._process(head, tail)

    def _wait(self, head: int) -> int | None:
        """Sleep until the guest has produced entries; returns ent_tail, or None to look again."""
        ctl = self.ctl
        for _ in range(IDLE_CHECKS):
            tail = ctl[CTL_ENT_TAIL]
            if tail != head:
                return tail
        ctl[CTL_NEEDS_KICK] = 1
        self._fence()                                  # store needs_kick before loading ent_tail
        tail = ctl[CTL_ENT_TAIL]
        if tail == head and not self.stopping:
            if select.select([self.efd], [], [], MAX_SLEEP_S)[0]:
                os.read(self.efd, 8)
        ctl[CTL_NEEDS_KICK] = 0
        return None

    def _process(self, head: int, tail: int) -> int:
        ring = self.ring
        ctl = self.ctl
        mem = self.mem
        while head != tail:
            op, handle, data, length, req_id = RING_ENTRY.unpack_from(ring, OFF_ENTRIES + 32 * (head & HVT_RING_MASK))
            dev = self.devices.get(handle)
            if op == RING_OP_NET_WRITE:
                if dev is not None:
                    with mem.view(data, length) as frame:
                        try:
                            n = os.write(dev.fd, frame)
                        except OSError as e:
                            raise HostIOError(f"Fatal write error on net device: {os.strerror(e.errno)}",
                                              with_prog=False) from None
                    if n != length:
                        raise HostIOError(f"Fatal write error: wrote only {n} out of {length} bytes", with_prog=False)
            elif op == RING_OP_NET_READ:
                ctl[CTL_ENT_HEAD] = head                  # publish the writes batched so far
                ret, n = hvt.SOLO5_R_EINVAL, 0
                if dev is not None:
                    with mem.writable_view(data, length) as buf:
                        try:
                            n = os.readv(dev.fd, [buf])
                            ret = hvt.SOLO5_R_OK if n > 0 else hvt.SOLO5_R_AGAIN
                        except BlockingIOError:
                            ret, n = hvt.SOLO5_R_AGAIN, 0
                        except OSError:
                            ret, n = hvt.SOLO5_R_EINVAL, 0
                com_tail = ctl[CTL_COM_TAIL]
                RING_COMMIT.pack_into(ring, OFF_COMMITS + 16 * (com_tail & HVT_RING_MASK), req_id, ret, n)
                ctl[CTL_COM_TAIL] = (com_tail + 1) & 0xFFFFFFFF
            head = (head + 1) & 0xFFFFFFFF
        ctl[CTL_ENT_HEAD] = head
        return head

    def stop(self) -> None:
        """Stop and join the thread, release the ring view and the eventfd; idempotent."""
        if self.efd < 0:
            return
        self._stop_thread()
        self.ctl.release()
        self.ring.release()
        os.close(self.efd)
        self.efd = -1


def start_ring(kvm: Kvm, vmfd: VmFd, mem: GuestMemory, devices: dict[int, NetDevice],
               on_error: Callable[[UkvmError], None], warn: Callable[[str], None]) -> RingServer | None:
    """Offer the ring when KVM can deliver kicks without an exit (hvt-abi.md 9.1); else None."""
    if kvm.check_extension(abi.KVM_CAP_IOEVENTFD) <= 0:
        return None
    try:
        efd = os.eventfd(0, os.EFD_CLOEXEC)
    except OSError as e:
        warn(f"eventfd() failed, falling back to hypercalls: {os.strerror(e.errno)}")
        return None
    try:
        vmfd.ioeventfd(HVT_RING_KICK_PORT, 4, efd)
    except KvmError as e:
        os.close(efd)
        warn(f"KVM_IOEVENTFD failed, falling back to hypercalls: {e}")
        return None
    server = RingServer(mem, devices, efd, on_error)
    server.start()
    return server
