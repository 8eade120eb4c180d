"""ELF loader: header checks, note lookup and segment loading on valid and corrupt images."""
import os
import struct

import pytest

from elfgen import abi_note, make_elf, mft_note, note
from ukvm.machine.elf import NOTE_MFT1, ElfFile
from ukvm.errors import ElfError, UkvmError
from ukvm.machine.memory import GuestMemory
from ukvm.machine.vm import Kernel


@pytest.fixture
def write(tmp_path):
    def _write(data: bytes, name="k.hvt"):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)
    return _write


@pytest.fixture
def mem():
    m = GuestMemory(8 << 20)
    yield m
    m.close()


def test_valid_image_loads(write, mem):
    data = b"\x90" * 100 + b"\xf4"
    path = write(make_elf(segments=[(0x100000, data, 0x3000, 1, 0x1000),
                                    (0x200000, b"xyz", 0x2000, 6, 0x1000)], entry=0x100010))
    with ElfFile(path) as elf:
        result = elf.load(mem)
    assert result.entry == 0x100010
    assert result.kernel_end == 0x202000
    assert mem.host_read(0x100000, len(data)) == data
    assert mem.host_read(0x200000, 4) == b"xyz\0"
    assert mem.is_readonly(0x100000) and mem.is_readonly(0x102fff)
    assert not mem.is_readonly(0x200000)


@pytest.mark.parametrize("kwargs,message", [
    ({"ident": b"\x7fELG\x02\x01\x01"}, "elf header invalid while loading note"),
    ({"ident": b"\x7fELF\x01\x01\x01"}, "elf header invalid while loading note"),
    ({"ident": b"\x7fELF\x02\x02\x01"}, "elf header invalid while loading note"),
    ({"e_type": 3}, "elf header invalid while loading note"),                  # PIE
    ({"machine": 3}, "elf header invalid while loading note"),
    ({"phentsize": 32}, "elf header invalid while loading note"),
])
def test_bad_headers(write, kwargs, message):
    with pytest.raises(ElfError, match=message):
        ElfFile(write(make_elf(**kwargs)))


def test_short_file(write):
    path = write(b"\x7fELF")
    with pytest.raises(ElfError) as e:
        ElfFile(path)
    assert str(e.value) == f"{path}: invalid executable: elf header does not match the expected size (4 != 64)"


def test_truncated_program_headers(write):
    with pytest.raises(ElfError, match="program header does not match the expected size"):
        ElfFile(write(make_elf()[:100]))


def test_missing_file(tmp_path):
    with pytest.raises(ElfError, match="Could not open: No such file or directory"):
        ElfFile(str(tmp_path / "nope"))


def test_a_fifo_or_a_directory_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "fifo.hvt"
    os.mkfifo(fifo)                         # nobody writes it: a blocking open would never return
    for path in (fifo, tmp_path):
        with pytest.raises(ElfError) as e:
            ElfFile(str(path))
        assert str(e.value) == f"{path}: Could not open: not a regular file"


@pytest.mark.parametrize("notes,message", [
    ([mft_note()], "No Solo5 ABI information found in executable"),
    ([abi_note(target=2), mft_note()], "Executable is not for the solo5-hvt target"),
    ([abi_note(version=1), mft_note()], "Executable requests unsupported ABI version 1"),
    ([abi_note()], "No Solo5 manifest found in executable"),
    ([abi_note(), note(NOTE_MFT1, bytes(4) + b"\x02" + bytes(7))], "Solo5 manifest is invalid"),
    ([abi_note(), note(NOTE_MFT1, b"x")], "INV_EXE: phdr\\[2\\] note does not fall within valid size "
                                          "\\(18446744073709551613 <= 0"),
    ([abi_note(), note(NOTE_MFT1, bytes(7000))], "note does not fall within valid size \\(7000 < 1"),
    ([note(0x31494241, bytes(40))], "note does not fall within valid size"),
    ([abi_note()[:10]], "p_filesz note does not fall within valid size \\(10 < 12\\)"),
])
def test_note_errors(write, notes, message):
    with pytest.raises(UkvmError, match=message):
        Kernel(write(make_elf(notes=notes)))


def test_other_notes_are_skipped(write):
    notes = [note(1, bytes(4), namesz=8, name=b"OpenBSD\0"), note(0x31494241, bytes(16), name=b"Solo6\0\0\0"),
             abi_note(), mft_note()]
    Kernel(write(make_elf(notes=notes))).close()


@pytest.mark.parametrize("segments,entry,message", [
    ([(0x100000, b"a", 1, 5, 0x1000)], 0x1000,
     "e_entry does not fall within the memory allocation range \\(4096 < 1048576 \\|\\| 4096 >= 8388608\\)"),
    ([(0x1000, b"a", 1, 5, 0x1000)], 0x100000, "phdr\\[0\\].p_vaddr outside of valid memory range \\(4096 < 1048576\\)"),
    ([(0x200000, b"a", 1, 5, 0x1000), (0x100000, b"b", 1, 6, 0x1000)], 0x100000,
     "phdr\\[1\\].p_vaddr is not in ascending order"),
    ([(0x100000, b"a", 1, 5, 3)], 0x100000, "align_down"),
    ([(0x100000, b"a", 0x2000, 5, 0x1000), (0x101000, b"b", 1, 6, 0x1000)], 0x100000,
     "phdr\\[1\\].p_vaddr_start is outside of memory range \\(1052672 < 1056768 \\(e_end\\)\\)"),
    ([(0x100000, b"a", 0, 5, 0x1000)], 0x100000, "program memory segment falls outside of valid range"),
    ([(0x100000, b"a", 0x10000000, 5, 0x1000)], 0x100000,
     "phdr\\[0\\] program memory segment falls outside of valid range \\(269484032 \\(p_vaddr \\+ p_memsz\\) > 8388608"),
    ([(0x100000, b"a", 2**64 - 0x100000, 5, 0x1000)], 0x100000, "program memory segment falls outside"),
    ([(0x100000, b"a", 1, 7, 0x1000)], 0x100000, "phdr\\[0\\] requests WRITE and EXEC permissions"),
    ([(0x100800, b"a", 1, 5, 0x800)], 0x100800, "p_vaddr_start not aligned with architectural page size"),
])
def test_segment_errors(write, mem, segments, entry, message):
    with ElfFile(write(make_elf(segments=segments, entry=entry))) as elf:
        with pytest.raises(ElfError, match=message):
            elf.load(mem)


def test_file_segment_past_end_of_file(write, mem):
    data = bytearray(make_elf())
    struct.pack_into("<Q", data, 64 + 32, 0x100000)   # phdr[0].p_filesz far beyond the file
    struct.pack_into("<Q", data, 64 + 40, 0x100000)
    with ElfFile(write(bytes(data))) as elf:
        with pytest.raises(ElfError, match="host file segment mismatched"):
            elf.load(mem)


def test_filesz_zero_segments_are_ignored(write, mem):
    # Upstream images carry an empty PT_LOAD at vaddr 0 (TLS template) and a file-less .bss.
    segs = [(0x100000, b"\xf4", 1, 5, 0x1000), (0, b"", 0, 4, 0x1000), (0x300000, b"", 0x5000, 6, 0x1000)]
    with ElfFile(write(make_elf(segments=segs))) as elf:
        assert elf.load(mem).kernel_end == 0x101000
