"""memory.py: guest physical memory, the only way to read or write it.

Theory of operation: guest memory is one private anonymous mapping registered with KVM at GPA 0.
Two sizes matter: `size` is the whole allocation (it includes the network ring when there is one)
and `limit` (M) is what hypercall pointers may reach. Every access on behalf of the guest goes
through check()/check_writable(), which reject ranges outside [0, limit) and ranges that touch
pages the loader made read-only or inaccessible on the host (writing there from Python would
kill the tender with SIGSEGV). Addresses and lengths are Python ints, so `gpa + size` cannot
wrap; values the guest gave as u64 are compared as such.
"""
import ctypes
import mmap
import os
import struct

from ukvm.errors import GuestMemoryError, KvmError

PROT_NONE = 0
MAP_NORESERVE = 0x4000   # not exported by the mmap module before Python 3.13
HUGE_PAGE = 2 << 20
PROT_READ = 1
PROT_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int
PAGE = 4096


class GuestMemory:
    def __init__(self, size: int, backing: tuple[int, int] | None = None):
        """Anonymous memory, or with `backing` = (fd, offset) a private copy-on-write mapping of
        that file range (a snapshot's memory: snapshot.py)."""
        try:
            if backing is None:
                self._mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
                                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
            else:
                self._mm = mmap.mmap(backing[0], size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                                     prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=backing[1])
        except OSError as e:
            raise KvmError(f"Error allocating guest memory: {os.strerror(e.errno)}") from None
        # SAFETY: the pin is dropped at once; the address stays valid while self._mm is open.
        pin = ctypes.c_char.from_buffer(self._mm)
        self.host_addr = ctypes.addressof(pin)
        del pin
        self.size = size
        self.limit = size
        self._readonly: list[tuple[int, int]] = []
        self._noaccess: list[tuple[int, int]] = []
        # Fast paths (docs/performance.md): at and above these floors no protected range starts,
        # so a range there needs only the bound check. Hypercall structs and buffers live on the
        # guest's stack and heap, above every loaded segment.
        self._read_floor = 0
        self._write_floor = 0
        self._mv = memoryview(self._mm)     # one export, sliced per access; released in close()

    def advise_huge_pages(self, image_end: int) -> None:
        """Huge pages speed up large guest buffers (block I/O) but round every touched 2 MiB
        region up to 2 MiB of RSS. A small guest touches the boot area and the image start
        (first 2 MiB), its stack (last 2 MiB) and its last globals at the image's end, which
        often sit right after large static buffers it may never use (Solo5's bindings: 2 MiB of
        ring staging buffers, then their variables). Those regions stay small pages."""
        lo = (image_end - 1) // HUGE_PAGE * HUGE_PAGE if image_end else 0
        for start, end in ((HUGE_PAGE, lo), (max(HUGE_PAGE, lo + HUGE_PAGE), self.size - HUGE_PAGE)):
            if end > start:
                self._mm.madvise(mmap.MADV_HUGEPAGE, start, end - start)

    # --- checks -------------------------------------------------------------------------------
    def check(self, gpa: int, size: int) -> None:
        """Raise GuestMemoryError unless [gpa, gpa+size) lies in guest memory and is host-readable."""
        if gpa >= self.limit or gpa + size > self.limit or gpa < 0 or size < 0:
            raise GuestMemoryError(gpa, size)
        for start, end in self._noaccess:
            if gpa < end and gpa + size > start:
                raise GuestMemoryError(gpa, size)

    def check_writable(self, gpa: int, size: int) -> None:
        if self._write_floor <= gpa < self.limit and size <= self.limit - gpa:
            return
        self.check(gpa, size)
        for start, end in self._readonly:
            if gpa < end and gpa + size > start:
                raise GuestMemoryError(gpa, size)

    def is_readonly(self, gpa: int) -> bool:
        return any(start <= gpa < end for start, end in self._readonly)

    # --- guest-initiated access (checked against limit and protections) ------------------------
    # Each method tests the common case inline (above the floor, inside the limit) and falls back
    # to the full check; gpa and size are never negative here (they come from unsigned fields).
    def view(self, gpa: int, size: int) -> memoryview:
        """A window on guest bytes to read (callers never write through it); keep it short-lived."""
        if not (self._read_floor <= gpa < self.limit and size <= self.limit - gpa):
            self.check(gpa, size)
        return self._mv[gpa:gpa + size]

    def writable_view(self, gpa: int, size: int) -> memoryview:
        if not (self._write_floor <= gpa < self.limit and size <= self.limit - gpa):
            self.check_writable(gpa, size)
        return self._mv[gpa:gpa + size]

    def read(self, gpa: int, size: int) -> bytes:
        self.check(gpa, size)
        return self._mm[gpa:gpa + size]

    def unpack(self, st: struct.Struct, gpa: int) -> tuple:
        if not (self._read_floor <= gpa < self.limit and st.size <= self.limit - gpa):
            self.check(gpa, st.size)
        return st.unpack_from(self._mm, gpa)

    def pack(self, st: struct.Struct, gpa: int, *values) -> None:
        if not (self._write_floor <= gpa < self.limit and st.size <= self.limit - gpa):
            self.check_writable(gpa, st.size)
        st.pack_into(self._mm, gpa, *values)

    # --- tender-initiated set-up (checked against the whole allocation only) -------------------
    def host_write(self, gpa: int, data) -> None:
        if gpa < 0 or gpa + len(data) > self.size or self._overlaps_protected(gpa, len(data)):
            raise GuestMemoryError(gpa, len(data))
        self._mm[gpa:gpa + len(data)] = data

    def _overlaps_protected(self, gpa: int, size: int) -> bool:
        return any(gpa < end and gpa + size > start for start, end in self._readonly + self._noaccess)

    def host_read(self, gpa: int, size: int) -> bytes:
        if gpa < 0 or gpa + size > self.size or any(gpa < e and gpa + size > s for s, e in self._noaccess):
            raise GuestMemoryError(gpa, size)
        return self._mm[gpa:gpa + size]

    def host_view(self, gpa: int, size: int) -> memoryview | None:
        """A window on guest bytes for the tender's own reading (core dumps), or None when the
        range touches pages the loader made inaccessible (reading them would fault)."""
        if gpa < 0 or gpa + size > self.size:
            raise GuestMemoryError(gpa, size)
        if any(gpa < e and gpa + size > s for s, e in self._noaccess):
            return None
        return self._mv[gpa:gpa + size]

    def tender_area(self, gpa: int, size: int) -> memoryview:
        """A writable view of a tender-owned area (the network ring, above `limit`).

        It pins the mapping: the owner must release() it before close()."""
        if gpa < 0 or gpa + size > self.size:
            raise GuestMemoryError(gpa, size)
        return memoryview(self._mm)[gpa:gpa + size]

    def load_from_file(self, fd: int, file_offset: int, gpa: int, size: int) -> int:
        """Read `size` file bytes straight into guest memory (loader); returns bytes read."""
        if gpa < 0 or gpa + size > self.size:
            raise GuestMemoryError(gpa, size)
        return self._preadv_full(fd, file_offset, gpa, size)

    def _preadv_full(self, fd: int, file_offset: int, gpa: int, size: int) -> int:
        done = 0
        with memoryview(self._mm) as whole:
            while done < size:
                with whole[gpa + done:gpa + size] as window:
                    n = os.preadv(fd, [window], file_offset + done)
                if n == 0:
                    break
                done += n
        return done

    def protect(self, start: int, end: int, prot: int) -> None:
        """Apply host page protection to [start, end) (page aligned) and remember it."""
        # SAFETY: start/end were checked by the loader to lie inside the mapping and be page aligned.
        if _libc.mprotect(self.host_addr + start, end - start, prot) != 0:
            raise KvmError(f"mprotect failed: {os.strerror(ctypes.get_errno())}")
        if prot == PROT_NONE:
            self._noaccess.append((start, end))
            self._read_floor = max(self._read_floor, end)
        elif not prot & PROT_WRITE:
            self._readonly.append((start, end))
        if not prot & PROT_WRITE:
            self._write_floor = max(self._write_floor, end)

    def resident_ranges(self) -> list[tuple[int, int]]:
        """[start, end) runs of pages that hold data (mincore) and may be read from the host:
        what a copy of this memory must take (snapshots); the rest reads as zeros anyway."""
        vec = (ctypes.c_ubyte * ((self.size + PAGE - 1) // PAGE))()
        if _libc.mincore(self.host_addr, self.size, vec) != 0:
            raise KvmError(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        import re         # here, not at the top: `re` costs every start-up ~5 ms (docs/performance.md)
        runs = [(m.start() * PAGE, m.end() * PAGE) for m in re.finditer(rb"[\x01-\xff]+", bytes(vec))]
        for hole_start, hole_end in self._noaccess:
            runs = [r for s, e in runs for r in ((s, min(e, hole_start)), (max(s, hole_end), e)) if r[0] < r[1]]
        return runs

    def protected_ranges(self) -> dict[str, list[tuple[int, int]]]:
        return {"readonly": list(self._readonly), "noaccess": list(self._noaccess)}

    def restore_from(self, source: memoryview, gpa: int, size: int) -> None:
        """Put a snapshot's bytes back (Clone.reset) from `source`, the snapshot's memory mapped
        read-only: pages the guest or the tender wrote, so never host-protected ones; one
        memcpy, the pages stay mapped."""
        if gpa < 0 or gpa + size > self.size or gpa + size > len(source):
            raise GuestMemoryError(gpa, size)
        self._mv[gpa:gpa + size] = source[gpa:gpa + size]

    def close(self) -> None:
        if not self._mm.closed:
            self._mv.release()
            self._mm.close()


class TrackedGuestMemory(GuestMemory):
    """Guest memory of a clone: remembers which pages the tender wrote for the guest (hypercall
    results, frames, blocks), which KVM's dirty log does not see, so that reset can restore them.
    A set of page numbers: bounded by the guest's size however long a restored VM runs."""

    def __init__(self, size: int, backing: tuple[int, int] | None = None):
        super().__init__(size, backing)
        self.host_dirty: set[int] = set()

    def _note(self, gpa: int, size: int) -> None:
        first, last = gpa >> 12, (gpa + size - 1) >> 12
        if first == last:
            self.host_dirty.add(first)
        elif last > first:
            self.host_dirty.update(range(first, last + 1))

    def writable_view(self, gpa: int, size: int) -> memoryview:
        view = super().writable_view(gpa, size)
        self._note(gpa, size)
        return view

    def pack(self, st: struct.Struct, gpa: int, *values) -> None:
        super().pack(st, gpa, *values)
        self._note(gpa, st.size)
