"""modules/core.py: core hypercalls: WALLTIME, PUTS, POLL (hvt-abi.md 8.4-8.6).

HALT is handled by the VM's run loop. POLL waits on the fds other modules register with
add_pollfd(); with none it is a plain sleep. Under `ukvm run` it also waits on the signalfd of
machine/signals.py, so that SIGINT/SIGTERM end even an hour-long sleep.
"""
from __future__ import annotations

import os
import select
import time

from ukvm import hvt_abi as hvt
from ukvm.machine import signals
from ukvm.modules import Module

MAX_SLEEP_S = 3600.0   # long guest sleeps are taken in slices; a signal ends them anyway
WAKE, SIGNALS = -1, -2  # pollfds handles that are no guest NIC


class CoreModule(Module):
    name = "core"

    def __init__(self, manifest):
        super().__init__(manifest)
        self.pollfds: dict[int, int] = {}      # host fd -> guest handle
        self._epoll: select.epoll | None = None
        self.stdout_fd = 1
        self.wake_fd = -1                      # an eventfd that ends a POLL early (enable_wake)
        self.on_idle = None                    # called at a POLL with no input pending (serve)
        self.parked = False                    # serve: an idle clone's POLL outlasts its timeout

    def setup(self, vm: VM) -> None:
        self.mem = vm.mem
        self.vm = vm                                   # its stop_requested: is a wake-up a stop of this run?
        vm.hypercalls.register(hvt.HVT_HYPERCALL_WALLTIME, self.hvt_hc_walltime)
        vm.hypercalls.register(hvt.HVT_HYPERCALL_PUTS, self.hvt_hc_puts)
        vm.hypercalls.register(hvt.HVT_HYPERCALL_POLL, self.hvt_hc_poll)
        if signals.pending_fd() >= 0:
            self.add_pollfd(signals.pending_fd(), SIGNALS)

    def enable_wake(self) -> None:
        """Let wake() end a POLL in progress (VM.request_stop); for VMs that are stopped from
        another thread."""
        if self.wake_fd < 0:
            self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.add_pollfd(self.wake_fd, WAKE)

    def wake(self) -> None:
        if self.wake_fd >= 0:
            os.eventfd_write(self.wake_fd, 1)

    def add_pollfd(self, fd: int, handle: int) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self.pollfds[fd] = handle

    # Handlers run once per exit: what they use is bound as default arguments (locals), so a
    # call touches as little interpreter state as possible (docs/performance.md).
    def hvt_hc_walltime(self, gpa: int, _arg=hvt.hvt_hc_walltime, _now=time.time_ns) -> None:
        self.mem.pack(_arg, gpa, _now())

    def hvt_hc_puts(self, gpa: int, _arg=hvt.hvt_hc_puts) -> None:
        mem = self.mem
        data, length = mem.unpack(_arg, gpa)
        with mem.view(data, length) as buf:
            write_all(self.stdout_fd, buf)

    def hvt_hc_poll(self, gpa: int) -> None:
        mem = self.mem
        timeout_ns = mem.unpack(hvt.hvt_hc_poll, gpa)[0]
        mem.check_writable(gpa, hvt.hvt_hc_poll.size)
        ready_set = 0
        nready = 0
        if self.on_idle is not None and (self._epoll is None or not self._epoll.poll(0)):
            mem.pack(hvt.HVT_POLL_OUT, gpa + 8, 0, 0)    # "nothing yet": the guest polls again
            self.on_idle()
            return
        if self._epoll is None:
            deadline = time.monotonic() + timeout_ns / 1e9
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, MAX_SLEEP_S))
        else:
            events = self._epoll.poll(min(timeout_ns / 1e9, MAX_SLEEP_S))
            while True:
                if events and self.wake_fd >= 0 and any(fd == self.wake_fd for fd, _ in events) and not self.vm.stop_requested:
                    self._drop_wake()             # a wake-up that came after its stop: stale
                    events = [e for e in events if e[0] != self.wake_fd]
                if events or not self.parked:     # parked: waiting for its connection (serve.py)
                    break
                events = self._epoll.poll(MAX_SLEEP_S)
            for fd, _events in events:
                handle = self.pollfds[fd]
                if handle == SIGNALS:
                    signals.deliver()            # its handler raises
                if handle < 0:       # wake(): the VM is being stopped; stays set until on_reset
                    continue
                ready_set |= 1 << handle
                nready += 1
        mem.pack(hvt.HVT_POLL_OUT, gpa + 8, ready_set, nready)

    def on_reset(self, vm: VM) -> None:
        self._drop_wake()

    def _drop_wake(self) -> None:
        if self.wake_fd >= 0:
            try:
                os.eventfd_read(self.wake_fd)
            except BlockingIOError:
                pass

    def sandbox_needs(self, vm: VM) -> Needs:
        """The run loop (KVM_RUN; the registers for error reports), PUTS, POLL and its wake-up."""
        from ukvm.kvm import abi
        from ukvm.sandbox.needs import Needs
        needs = Needs().on_fds("write", {self.stdout_fd}).ioctl({vm.vcpu.fd}, abi.KVM_RUN, abi.KVM_GET_REGS)
        needs.allow("clock_nanosleep")            # POLL without NICs: a plain sleep
        if self._epoll is not None:
            needs.on_fds("epoll_wait", {self._epoll.fileno()})
        if self.wake_fd >= 0:
            needs.on_fds(("read", "write"), {self.wake_fd})
        return needs

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            self.wake_fd = -1


def write_all(fd: int, buf) -> None:
    """Console output: all bytes, in order. A console nobody reads (EPIPE) drops the output. A
    reader that stops reading blocks the write: SIGINT/SIGTERM still end it (machine/signals.py),
    for two rt_sigprocmask calls per PUTS under `ukvm run` (about 1 µs against the exit's 5-10)."""
    try:
        with signals.unblocked():
            while buf:
                n = os.write(fd, buf)
                buf = buf[n:]
    except OSError:
        pass
