"""A clone's restore plan (machine/clone.py) without KVM: which pages it restores, from where,
and that what it keeps stays within the bound its docstring states, whatever the guest wrote."""
import ctypes
import os
import random
import tracemalloc

import pytest

from ukvm import hvt_abi as hvt
from ukvm.machine.clone import RestorePlan, bitmap_runs
from ukvm.errors import GuestMemoryError
from ukvm.machine.memory import TrackedGuestMemory
from ukvm.machine.snapshot import Snapshot

MIB = 1 << 20


class FakeVmFd:
    """KVM's dirty log as the plan reads it: `pages` are reported written (cumulatively, as with
    manual protection)."""

    def __init__(self):
        self.pages: set[int] = set()

    def get_dirty_log(self, _slot, bitmap):
        words = ctypes.cast(bitmap, ctypes.POINTER(ctypes.c_uint64))
        for page in self.pages:
            words[page // 64] |= 1 << (page % 64)


class FakeSnapshot:
    def __init__(self, size, ring_gpa=0):
        self.size, self.ring_gpa = size, ring_gpa

    def memory_view(self):
        return "snapshot memory"


class RecordingMemory:
    """Guest memory that only records what the plan restores."""

    def __init__(self):
        self.host_dirty: set[int] = set()
        self.reads: list[tuple[int, int, int]] = []

    def restore_from(self, source, gpa, size):
        assert source == "snapshot memory"
        self.reads.append((gpa, size))


def plan_for(size, guest_pages, host_pages=(), ring_gpa=0, measure=False):
    """A plan that has seen `guest_pages` and `host_pages` written; with `measure`, also the
    bytes Python holds after making and updating it (the plan's own memory, tracemalloc)."""
    vmfd, mem = FakeVmFd(), RecordingMemory()
    vmfd.pages |= set(guest_pages)
    mem.host_dirty |= set(host_pages)
    if measure:
        tracemalloc.start()
    try:
        plan = RestorePlan(FakeSnapshot(size, ring_gpa=ring_gpa), mem, vmfd)
        plan.update()
        kept = tracemalloc.get_traced_memory()[0] if measure else None
    finally:
        if measure:
            tracemalloc.stop()
    return plan, mem, vmfd, kept


def test_restores_guest_and_tender_writes_as_runs():
    plan, mem, vmfd, _ = plan_for(32 * MIB, [1, 2, 3, 100], host_pages=[4, 7000])
    plan.apply()
    assert mem.reads == [(0x1000, 4 * 4096), (100 * 4096, 4096), (7000 * 4096, 4096)]
    assert plan.pages == 6 and not mem.host_dirty
    mem.reads.clear()
    plan.update()                      # nothing new: the same pages again, every reset
    plan.apply()
    assert [r[0] >> 12 for r in mem.reads] == [1, 100, 7000]
    mem.host_dirty.add(50)
    vmfd.pages.add(101)
    plan.update()
    assert plan.pages == 8 and list(plan._runs) == [1, 5, 50, 51, 100, 102, 7000, 7001]


def test_the_ring_header_is_always_restored():
    ring = 30 * MIB
    plan, mem, _, _ = plan_for(32 * MIB, [], ring_gpa=ring)
    plan.apply()
    pages = (hvt.HVT_RING_STRUCT_SIZE + 4095) // 4096
    assert mem.reads == [(ring, pages * 4096)]


@pytest.mark.parametrize("pattern", ["all", "every_other", "random"])
def test_what_the_plan_keeps_is_bounded(pattern):
    """512 MiB of guest: whatever is written, the plan keeps at most 3*size/32768 + 16*min(N, P/2+1)
    bytes (no page contents), where the old plan kept a copy of every page written."""
    size = 512 * MIB
    total = size // 4096
    pages = {"all": range(total), "every_other": range(0, total, 2),
             "random": random.Random(19).sample(range(total), 5000)}[pattern]
    plan, _, _, kept = plan_for(size, pages, measure=True)
    assert plan.pages == len(pages)
    assert plan.held_bytes() <= plan.bound() <= 48 * 1024 + 16 * (total // 2 + 1)
    assert kept <= plan.bound() + 8 * 1024           # all Python holds after update(): the plan, a few objects


def test_a_real_mapping_is_restored_from_the_snapshot():
    """With real memory and a real Snapshot's mapping: a page written after the snapshot gets
    the snapshot's bytes back, and the guest's other pages are left alone."""
    size = 2 * MIB
    fd = os.memfd_create("plan-test")
    os.ftruncate(fd, size)
    os.pwrite(fd, b"S" * 4096, 5 * 4096)
    snap = Snapshot(fd, 0, size, size, {"readonly": [], "noaccess": []}, None, 0, 0, 0, False, b"", {})
    mem = TrackedGuestMemory(size, (fd, 0))
    try:
        plan = RestorePlan(snap, mem, FakeVmFd())
        mem.pack(hvt.U32, 5 * 4096 + 8, 0xDEADBEEF)        # the tender writes for the guest
        mem.host_write(9 * 4096, b"x")                      # not tracked: must stay as written
        assert mem.host_read(5 * 4096 + 8, 4) == (0xDEADBEEF).to_bytes(4, "little")
        plan.update()
        plan.apply()
        assert mem.host_read(5 * 4096, 4096) == b"S" * 4096
        assert mem.host_read(9 * 4096, 1) == b"x"
        with pytest.raises(GuestMemoryError):
            mem.restore_from(snap.memory_view(), size - 4096, 8192)
    finally:
        mem.close()
        snap.close()


def reference_runs(bitmap: bytes) -> list[int]:
    """The flattened [start, end) runs of set bits, bit by bit: the slow, obvious oracle."""
    bits = [at * 8 + i for at, byte in enumerate(bitmap) for i in range(8) if byte >> i & 1]
    runs: list[int] = []
    for page in bits:
        if runs and runs[-1] == page:
            runs[-1] = page + 1
        else:
            runs += [page, page + 1]
    return runs


def test_bitmap_runs_match_the_page_set():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.choice([8, 100, 256, 257, 600, 2048])
        bitmap = bytes(rng.choice([0, 0, 255, rng.randrange(256)]) for _ in range(n))
        assert list(bitmap_runs(bitmap)) == reference_runs(bitmap)
