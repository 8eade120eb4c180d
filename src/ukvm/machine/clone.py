"""clone.py: a VM made from a snapshot, and the restore plan that resets it (docs/serve.md).

A Clone's memory is a private copy-on-write mapping of the snapshot's memory (a memfd, or a
snapshot file at a page-aligned offset), so clones share the snapshot's pages and each pays
only for the pages it writes. reset() puts the snapshot's bytes back into exactly the pages
written since the clone was made and reloads the registers, reusing every KVM object.

The restore plan learns which pages were written from KVM's dirty log (the guest's writes) and
from TrackedGuestMemory (the tender's writes on the guest's behalf). It holds page numbers only,
never page contents: each reset copies the snapshot's bytes into place from the snapshot's memory
mapped read-only and shared (Snapshot.memory_view: the page cache's own pages, one mapping for all
clones: no copy of its own. A memcpy from there measured ~80 us per reset of 67 pages, a preadv
of the same pages from the snapshot's fd ~130 us). Its memory is
bounded: three bitmaps of one bit per guest page (KVM's log, its last reading, the pages ever
written: 3*size/32768 bytes) plus 16 bytes per run of adjacent written pages, of which there are
at most min(N, P/2 + 1) for N written pages of P: at most 3*size/32768 + 16*min(N, P/2 + 1)
bytes. For a 512 MiB guest: 48 KiB if it wrote all of it in one run, 48 KiB + 1 MiB at worst
(every other page); the plan this replaced kept a copy of every page written (512 MiB).
The pages themselves stay mapped and written to in place (a
fault costs tens of microseconds on kvm_pvm), so a clone's memory cost is its private copy of the
pages it ever wrote, and no second copy.
"""
from __future__ import annotations

import array
import ctypes
from typing import Callable

from ukvm import hvt_abi as hvt
from ukvm.errors import UkvmError
from ukvm.kvm import abi
from ukvm.machine.memory import PROT_NONE, PROT_READ, TrackedGuestMemory
from ukvm.machine.snapshot import Snapshot, SnapshotError
from ukvm.machine.vm import VM, _stderr_warn
from ukvm.modules import Module, default_modules

PAGE_SHIFT = 12
_ZERO_CHUNK = bytes(256)


def bitmap_runs(bitmap: bytes) -> array.array:
    """The [start, end) page runs of a bitmap, flattened (start0, end0, start1, ...), without an
    object per page: chunks of zeros are skipped, and within a chunk a run's end is found by
    carrying through its ones."""
    runs = array.array("Q")
    step = len(_ZERO_CHUNK)
    for at in range(0, len(bitmap), step):
        chunk = bitmap[at:at + step]
        if chunk == _ZERO_CHUNK[:len(chunk)]:
            continue
        bits = int.from_bytes(chunk, "little")
        base = at * 8
        while bits:
            low = bits & -bits
            carried = bits + low                       # the run's ones carry into the bit after it
            end = (carried & -carried).bit_length() - 1
            start, stop = base + low.bit_length() - 1, base + end
            bits &= ~((1 << end) - 1)
            if runs and runs[-1] == start:             # continues the run of the previous chunk
                runs[-1] = stop
            else:
                runs.extend((start, stop))
    return runs[:]                # an exact-size copy: a grown array keeps up to 1/8 more room


class RestorePlan:
    """The pages a clone gets back from its snapshot at each reset (see the module docstring
    for what it holds and its bound)."""

    def __init__(self, snap: Snapshot, mem: TrackedGuestMemory, vmfd):
        self.snap, self.mem, self.vmfd = snap, mem, vmfd
        self.source = snap.memory_view()                  # mapped now, before any sandbox
        words = ((snap.size >> PAGE_SHIFT) + 63) // 64
        self._log = (ctypes.c_uint64 * words)()          # KVM's dirty log, read into place
        self._written = bytearray(words * 8)              # every page ever written, one bit each
        self._runs = array.array("Q")                     # start, end page of each run, flattened
        self._last_log = bytes(self._log)
        ring = snap.ring_gpa
        # The ring's control words and commits, written by the ring thread (not in either log).
        self._always = range(ring >> PAGE_SHIFT, (ring + hvt.HVT_RING_STRUCT_SIZE + 4095) >> PAGE_SHIFT) \
            if ring else range(0)

    def update(self) -> None:
        """Learn what this run wrote. With manual dirty-log protection KVM's log only grows (a page
        once written stays listed and writable, so it does not fault again); without it each read
        clears it: OR-ing covers both. The runs are recomputed only when a page was new."""
        self.vmfd.get_dirty_log(0, self._log)
        raw = bytes(self._log)
        written, host = self._written, self.mem.host_dirty
        new_host = [p for p in host if not written[p >> 3] >> (p & 7) & 1]
        host.clear()
        if raw == self._last_log and not new_host and self._runs:
            return                       # the common case: nothing written for the first time
        self._last_log = raw
        log = int.from_bytes(raw, "little")
        for page in (*new_host, *self._always):
            log |= 1 << page
        old = int.from_bytes(written, "little")
        if log | old == old and self._runs:
            return
        merged = (log | old).to_bytes(len(written), "little")
        self._written[:] = merged
        self._runs = bitmap_runs(merged)

    def apply(self) -> None:
        """Put the snapshot's bytes back into every page ever written: one memcpy per run."""
        restore, source, runs = self.mem.restore_from, self.source, self._runs
        for i in range(0, len(runs), 2):
            start = runs[i] << PAGE_SHIFT
            restore(source, start, (runs[i + 1] << PAGE_SHIFT) - start)

    @property
    def pages(self) -> int:
        """How many pages of the snapshot the clone has written (its own copies)."""
        return int.from_bytes(self._written, "little").bit_count()

    def held_bytes(self) -> int:
        """The plan's own memory for page data and bookkeeping (the stated bound applies)."""
        return ctypes.sizeof(self._log) + len(self._last_log) + len(self._written) \
            + self._runs.itemsize * len(self._runs)

    def bound(self) -> int:
        """The docstring's bound for this snapshot size and this many written pages."""
        total = self.snap.size >> PAGE_SHIFT
        return 3 * len(self._written) + 16 * min(self.pages, total // 2 + 1)


class Clone(VM):
    """A VM that goes on from `snap`; reset() brings it back there. `modules` (built on
    snap.manifest()) carry the devices to attach; their state comes from the snapshot, and the
    guest's memory size, CPL and features are the snapshot's."""

    def __init__(self, snap: Snapshot, modules: list[Module] | None = None,
                 warn: Callable[[str], None] = _stderr_warn):
        self.origin = snap                  # the Snapshot this clone came from and resets to
        self.kernel = None
        self.guest_cpl_choice = "auto"
        self.kernel_path, self.manifest_payload = snap.kernel, snap.manifest_payload
        self._construct(modules if modules is not None else default_modules(snap.manifest()), warn)

    def _build(self) -> None:
        snap = self.origin
        if any(getattr(m, "needs_ring_area", False) for m in self.modules) != (snap.size > snap.limit):
            raise SnapshotError(f"{snap.path}: the snapshot's network devices must be attached, and only they")
        self.mem = TrackedGuestMemory(snap.size, (snap.mem_fd, snap.mem_offset))
        self.mem.limit = snap.limit
        for kind, prot in (("readonly", PROT_READ), ("noaccess", PROT_NONE)):
            for start, end in snap.protections[kind]:
                self.mem.protect(start, end, prot)
        # Manual protection: a page the guest wrote once stays writable and stays in the dirty
        # log, so reset() restores it each time without a write fault per page per run; only a
        # page written for the first time faults (docs/serve.md).
        if self.kvm.check_extension(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) & abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE:
            self.vmfd.enable_cap(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        self.vmfd.set_user_memory_region(0, 0, snap.size, self.mem.host_addr, log_dirty=True)
        self.plan = RestorePlan(snap, self.mem, self.vmfd)
        self.vcpu.set_cpuid2(self.kvm.supported_cpuid())
        snap.vcpu.restore(self.vcpu)
        self.host_features, self.ring_gpa = snap.host_features, snap.ring_gpa
        self.guest_cpl, self.supervised = snap.guest_cpl, snap.supervised
        if self.supervised:
            self._register_supervisor()
        for module in self.modules:
            module.restore(self, snap.modules.get(module.name, {}))

    def reset(self) -> None:
        """Back to the snapshot, reusing every KVM object: the pages the guest or the tender
        wrote get the snapshot's bytes again, the registers are reloaded, the modules told."""
        if self.vcpu is None:
            raise UkvmError("reset: the clone is closed")
        for module in self.modules:
            module.quiesce(self)
        self.plan.update()
        self.plan.apply()
        self.origin.vcpu.restore(self.vcpu)
        self._stop_requested = self._interrupted = False
        self._thread_error = None
        self.vcpu.run[abi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 0
        for module in self.modules:
            module.on_reset(self)

    @property
    def pages_written(self) -> int:
        """How many pages of the snapshot this clone holds its own copy of (all it ever wrote)."""
        return self.plan.pages
