"""elf.py: reading hvt unikernel ELF files: header, Solo5 notes and PT_LOAD segments.

Follows hvt-abi.md section 3: the same checks, in the same order, with the same messages.
Everything read from the file is untrusted; only ElfError leaves this module.
"""
import os
import stat
import struct

from ukvm.errors import ElfError
from ukvm.machine.memory import PROT_NONE, PROT_READ, PROT_WRITE, GuestMemory

Elf64_Ehdr = struct.Struct("<16sHHIQQQIHHHHHH")
Elf64_Phdr = struct.Struct("<IIQQQQQQ")
Elf64_Nhdr = struct.Struct("<III8s")        # namesz, descsz, type, 8-byte name field
U64 = 1 << 64

ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
PAGE_SIZE = 0x1000
MIN_LOAD_ADDR = 0x100000

NOTE_ABI1 = 0x31494241
NOTE_MFT1 = 0x3154464D
# note type -> (payload alignment inside the note, maximum n_descsz)
NOTE_LIMITS = {NOTE_ABI1: (4, 32), NOTE_MFT1: (8, 6668)}
SOLO5_NOTE_NAME = b"Solo5\0"

# ukvm's own note (name "ukvm"): MODE, descriptor u32 flags; bit 0 asks to run at CPL3.
UKVM_NOTE_NAME = b"ukvm\0"
UKVM_NOTE_MODE = 0x45444F4D          # "MODE"
UKVM_MODE_CPL3 = 1
UKVM_MODE_DEBUG = 2       # the runtime reports #DB and int3 to a debugger (--gdb at CPL3)

ABI_TARGETS = {1: "hvt", 2: "spt", 3: "virtio", 4: "muen", 5: "genode", 6: "xen"}
HVT_ABI_TARGET = 1


class LoadResult:
    """entry point; kernel_end as hvt defines it (loaded segments only); image_end: the end of
    every PT_LOAD including file-less bss, which the guest will touch (memory.py uses it)."""
    __slots__ = ("entry", "kernel_end", "image_end")

    def __init__(self, entry: int, kernel_end: int, image_end: int = 0):
        self.entry, self.kernel_end, self.image_end = entry, kernel_end, image_end


class ElfFile:
    """An opened kernel file with its validated ELF header and program headers."""

    def __init__(self, path: str):
        self.path = path
        try:
            # O_NONBLOCK: a FIFO given as the kernel must not hang the open (regular files ignore it).
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise ElfError(f"{path}: Could not open: {os.strerror(e.errno)}") from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ElfError(f"{path}: Could not open: not a regular file")
        try:
            self._read_headers()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> ElfError:
        return ElfError(f"{self.path}: invalid executable: {what}")

    def _pread(self, size: int, offset: int) -> bytes:
        if offset >= U64 or size < 0:
            return b""
        try:
            return os.pread(self.fd, size, offset)
        except (OSError, OverflowError):
            return b""

    def _read_headers(self) -> None:
        hdr = self._pread(Elf64_Ehdr.size, 0)
        if len(hdr) != Elf64_Ehdr.size:
            raise self._fail(f"elf header does not match the expected size ({len(hdr)} != 64)")
        (ident, e_type, e_machine, e_version, self.e_entry, e_phoff, _shoff, _flags,
         e_ehsize, e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = Elf64_Ehdr.unpack(hdr)
        if (ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1 or e_version != 1
                or e_ehsize != 64 or e_phnum < 1 or e_phentsize != Elf64_Phdr.size
                or e_type != ET_EXEC or e_machine != EM_X86_64):
            raise self._fail("invalid or unsupported executable (elf header invalid while loading note)")
        size = e_phnum * Elf64_Phdr.size
        table = self._pread(size, e_phoff)
        if len(table) != size:
            raise self._fail(f"program header does not match the expected size ({len(table)} != {size})")
        self.phdrs = [Elf64_Phdr.unpack_from(table, i * Elf64_Phdr.size) for i in range(e_phnum)]

    # --- notes ---------------------------------------------------------------------------------
    def find_note(self, note_type: int) -> bytes | None:
        """Payload of the first Solo5 note of `note_type` (one note at the start of a PT_NOTE)."""
        align, max_descsz = NOTE_LIMITS[note_type]
        for i, (p_type, _flags, p_offset, _va, _pa, p_filesz, _ms, _al) in enumerate(self.phdrs):
            if p_type != PT_NOTE:
                continue
            if p_filesz < 12:
                raise self._fail(f"phdr[{i}].p_filesz note does not fall within valid size ({p_filesz} < 12)")
            if p_filesz < Elf64_Nhdr.size:
                continue
            raw = self._pread(Elf64_Nhdr.size, p_offset)
            if len(raw) != Elf64_Nhdr.size:
                raise self._fail(f"phdr[{i}] note header does not match the expected size")
            namesz, descsz, n_type, name = Elf64_Nhdr.unpack(raw)
            if namesz != len(SOLO5_NOTE_NAME) or name[:6] != SOLO5_NOTE_NAME or n_type != note_type:
                continue
            if descsz < 1 or descsz > max_descsz:
                raise self._fail(f"phdr[{i}] note does not fall within valid size "
                                 f"({descsz} < 1 || {descsz} > {max_descsz})")
            if p_filesz < Elf64_Nhdr.size + descsz:
                raise self._fail(f"phdr[{i}] note does not fall within valid size "
                                 f"({p_filesz} < {Elf64_Nhdr.size + descsz})")
            offset = -(-Elf64_Nhdr.size // align) * align
            payload_size = (descsz - (offset - Elf64_Nhdr.size)) % U64
            if payload_size == 0 or payload_size > descsz:
                raise ElfError(f"{self.path}: INV_EXE: phdr[{i}] note does not fall within valid size "
                               f"({payload_size} <= 0 || {payload_size} > {descsz})")
            payload = self._pread(payload_size, p_offset + offset)
            if len(payload) != payload_size:
                raise self._fail(f"phdr[{i}] note payload does not match the expected size")
            return payload
        return None

    def ukvm_mode(self) -> int | None:
        """Flags of the ukvm MODE note; None when there is none (a Solo5-built image)."""
        for i, (p_type, _flags, p_offset, _va, _pa, p_filesz, _ms, _al) in enumerate(self.phdrs):
            if p_type != PT_NOTE or p_filesz < Elf64_Nhdr.size + 4:
                continue
            raw = self._pread(Elf64_Nhdr.size + 4, p_offset)
            if len(raw) != Elf64_Nhdr.size + 4:
                continue
            namesz, descsz, n_type, name = Elf64_Nhdr.unpack_from(raw)
            if namesz == len(UKVM_NOTE_NAME) and name[:5] == UKVM_NOTE_NAME and n_type == UKVM_NOTE_MODE:
                if descsz != 4:
                    raise self._fail(f"phdr[{i}] ukvm note does not fall within valid size ({descsz} != 4)")
                return struct.unpack_from("<I", raw, Elf64_Nhdr.size)[0]
        return None

    def abi(self) -> tuple[int, int] | None:
        """(abi_target, abi_version) from the ABI1 note, or None when there is none."""
        payload = self.find_note(NOTE_ABI1)
        if payload is None:
            return None
        if len(payload) < 8:
            raise self._fail("ABI note is too short")
        return struct.unpack_from("<II", payload)

    def check_hvt_abi(self, abi_version: int) -> None:
        abi = self.abi()
        if abi is None:
            raise ElfError(f"{self.path}: No Solo5 ABI information found in executable")
        target, version = abi
        if target != HVT_ABI_TARGET:
            raise ElfError(f"{self.path}: Executable is not for the solo5-hvt target")
        if version != abi_version:
            raise ElfError(f"{self.path}: Executable requests unsupported ABI version {version}")

    # --- loading -------------------------------------------------------------------------------
    def load(self, mem: GuestMemory) -> LoadResult:
        """Copy PT_LOAD segments into `mem` (whole allocation) and apply host page protections."""
        mem_size = mem.size
        entry = self.e_entry
        if not MIN_LOAD_ADDR <= entry < mem_size:
            raise self._fail(f"e_entry does not fall within the memory allocation range "
                             f"({entry} < {MIN_LOAD_ADDR} || {entry} >= {mem_size})")
        e_end = 0
        prev_vaddr = 0
        image_end = 0
        for i, (p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_align) in enumerate(self.phdrs):
            if p_type == PT_LOAD and MIN_LOAD_ADDR <= p_vaddr and p_vaddr + p_memsz <= mem_size:
                image_end = max(image_end, p_vaddr + p_memsz)
            if p_type != PT_LOAD or p_filesz == 0:
                continue
            where = f"phdr[{i}]"
            if p_vaddr < MIN_LOAD_ADDR:
                raise self._fail(f"{where}.p_vaddr outside of valid memory range ({p_vaddr} < {MIN_LOAD_ADDR})")
            if p_vaddr < prev_vaddr:
                raise self._fail(f"{where}.p_vaddr is not in ascending order ({p_vaddr} < {prev_vaddr})")
            prev_vaddr = p_vaddr
            if p_align == 0 or p_align & (p_align - 1):
                raise self._fail(f"{where}.p_vaddr is outside of memory range (align_down({p_vaddr}, {p_align}) failed)")
            start = p_vaddr & ~(p_align - 1)
            if start < MIN_LOAD_ADDR:
                raise self._fail(f"{where}.p_vaddr_start is outside of memory range "
                                 f"({start} < {MIN_LOAD_ADDR} (p_min_loadaddr))")
            if start < e_end:
                raise self._fail(f"{where}.p_vaddr_start is outside of memory range ({start} < {e_end} (e_end))")
            if p_vaddr >= mem_size or p_vaddr + p_filesz >= U64 or p_vaddr + p_filesz > mem_size:
                raise self._fail(f"{where} program file segment falls outside of valid range "
                                 f"({p_vaddr + p_filesz} (p_vaddr + p_filesz) > {mem_size} (mem_size))")
            end = -(-(p_vaddr + p_memsz) // p_align) * p_align
            if p_memsz < p_filesz or p_vaddr + p_memsz >= U64 or end >= U64 or end > mem_size:
                raise self._fail(f"{where} program memory segment falls outside of valid range "
                                 f"({p_vaddr + p_memsz} (p_vaddr + p_memsz) > {mem_size} (mem_size))")
            e_end = max(e_end, end)
            # Fresh guest memory is zero, so only the file part is copied (bss needs no zeroing).
            try:
                got = mem.load_from_file(self.fd, p_offset, p_vaddr, p_filesz)
            except (OSError, OverflowError):
                got = -1
            if got != p_filesz:
                raise self._fail(f"{where} host file segment mismatched")
            if start % PAGE_SIZE:
                raise self._fail(f"{where} p_vaddr_start not aligned with architectural page size")
            if end % PAGE_SIZE:
                raise self._fail(f"{where} p_vaddr_end not aligned with architectural page size")
            if p_flags & PF_W and p_flags & PF_X:
                raise self._fail(f"{where} requests WRITE and EXEC permissions")
            if p_flags & PF_W:
                prot = PROT_READ | PROT_WRITE
            elif p_flags & (PF_R | PF_X):
                prot = PROT_READ
            else:
                prot = PROT_NONE
            if prot != PROT_READ | PROT_WRITE:
                mem.protect(start, end, prot)
        return LoadResult(entry=entry, kernel_end=e_end, image_end=max(image_end, e_end))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
