"""serve/pool.py: a clone (a VM made from the snapshot, its switch socket and its vCPU thread).

Between connections a clone is parked: its guest has run to its first POLL after the reset and
waits there, ignoring its own timeout, so a connection's first frame finds it running. Its vCPU
thread runs the guest for one connection, resets it and reports to the event loop; whatever
goes wrong in that thread is reported too, never lost with the thread (docs/serve.md).
"""
from __future__ import annotations

import os
import socket
import threading
import time

from ukvm.machine.vm import VM

# What a run's end is reported as: (kind, detail). "stopped": the loop ended it (connection
# over, deadline); "halt": the guest exited (detail: status); "fault": the guest or its
# handling failed (detail: message); "broken": the clone could not be reset and is done.


class Clone:
    def __init__(self, index: int, vm: VM, sock: socket.socket, report, cpus: set[int], nic_fd: int = -1):
        self.index = index
        self.nic_fd = nic_fd             # the guest's end of `sock` (owned by the VM's net module)
        self.cpus = cpus
        self.vm = vm
        self.sock = sock                 # the switch's end of the clone's NIC
        self.conn = None                 # the Connection it serves, set and cleared by the loop
        self.serving = None              # the Connection its current run serves (None once over)
        self._serving_lock = threading.Lock()
        self.closing = False
        self.retired = False             # left the pool (broken); its sockets are closed
        self._report = report
        self.on_assign = None            # --trace: told each connection's number (trace.py)
        self.thread = threading.Thread(target=self._work, name=f"ukvm-clone{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def assign(self, conn) -> None:
        self.conn = conn
        with self._serving_lock:
            self.serving = conn
        if self.on_assign is not None:
            self.on_assign(conn.number)
        self.vm.core.parked = False      # from now on its POLL timeouts are the guest's own

    def _work(self) -> None:
        """Run the guest until its run is ended (the connection is over, a deadline passed, the
        guest halted or faulted), reset it, report, and park it again."""
        try:
            if self.cpus:
                os.sched_setaffinity(0, self.cpus)
        except OSError:
            pass                         # pinning is a speed-up only
        self.vm.core.parked = True
        while not self.closing:
            try:
                status = self.vm.run()
                outcome = ("stopped", None) if status is None else ("halt", status)
            except Exception as e:       # noqa: BLE001 (any failure ends this run only)
                outcome = ("fault", _describe(e))
            with self._serving_lock:     # before the reset, which clears a stop that came late
                self.serving = None
            if self.on_assign is not None:
                self.on_assign(0)
            if self.closing:
                return
            self._discard_frames()
            t0 = time.perf_counter()
            try:
                self.vm.reset()
                reset_s = time.perf_counter() - t0
            except Exception as e:       # noqa: BLE001 (a clone that cannot be reset leaves the pool)
                self._report(self, ("broken", f"reset failed: {_describe(e)}"), 0.0, outcome)
                return
            self.vm.core.parked = True   # before the report: assign() may clear it at once
            self._report(self, outcome, reset_s, None)

    def _discard_frames(self) -> None:
        """Frames the ended run did not read belong to its connection: the next one must not see
        them. (None can arrive after this: the loop stops routing to a connection before it
        stops its clone.)"""
        if self.nic_fd < 0:
            return
        for _ in range(100000):
            try:
                os.read(self.nic_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def stop_serving(self, conn) -> None:
        """End the run that serves `conn`. Nothing if that run is over (the guest halted or
        faulted while the loop was ending the connection): a stop set after the reset would end
        the clone's next run, and its connection, for nothing."""
        with self._serving_lock:
            if self.serving is conn:
                self.vm.request_stop()

    def stop(self) -> None:
        self.closing = True
        try:
            self.vm.request_stop()
        except Exception:                # noqa: BLE001 (stopping a half-closed VM: nothing to stop)
            pass


def _describe(e: BaseException) -> str:
    text = str(e)
    return text if text and type(e).__module__.startswith("ukvm") else f"{type(e).__name__}: {text}"
