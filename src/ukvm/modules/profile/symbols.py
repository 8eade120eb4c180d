"""modules/profile/symbols.py: function names for guest addresses, from the kernel's ELF symbol
table (.symtab and its string table), read once at set-up.

The file is untrusted like everything else the tender reads: every offset and size is checked
against the file, the tables are capped in size, and a file without a symbol table just gives
hex addresses.
"""
from __future__ import annotations

import bisect
import os
import struct

Elf64_Ehdr = struct.Struct("<16sHHIQQQIHHHHHH")
Elf64_Shdr = struct.Struct("<IIQQQQIIQQ")
Elf64_Sym = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
STT_FUNC = 2
MAX_TABLE = 64 << 20          # larger symbol or string tables are not read
UNSAFE = {c: "_" for c in (*range(32), 127, ord(";"), ord(" "))}


class Symbols:
    """Sorted function symbols: name_of(addr) is `func` inside one, else `0x...`."""

    def __init__(self, funcs: list[tuple[int, int, str]]):
        # Names come from the image: no `;` or space (they split folded stacks' lines), no
        # control characters (a newline starts a line; XML refuses the rest in the SVG).
        funcs = [(addr, size, name.translate(UNSAFE)) for addr, size, name in funcs]
        funcs.sort()
        self.starts = [f[0] for f in funcs]
        self.funcs = funcs

    def lookup(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        start, size, name = self.funcs[i]
        return name if addr < start + max(size, 1) else None

    def name_of(self, addr: int) -> str:
        return self.lookup(addr) or f"{addr:#x}"

    @classmethod
    def from_file(cls, path: str) -> Symbols:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return cls([])
        try:
            return cls(read_functions(fd))
        finally:
            os.close(fd)


def _pread(fd: int, size: int, offset: int) -> bytes:
    if size < 0 or size > MAX_TABLE or offset < 0:
        return b""
    try:
        data = os.pread(fd, size, offset)
    except (OSError, OverflowError):
        return b""
    return data if len(data) == size else b""


def read_functions(fd: int) -> list[tuple[int, int, str]]:
    """(address, size, name) of every STT_FUNC symbol with an address; [] if the file has none."""
    hdr = _pread(fd, Elf64_Ehdr.size, 0)
    if len(hdr) != Elf64_Ehdr.size or hdr[:4] != b"\x7fELF":
        return []
    shoff, shentsize, shnum = Elf64_Ehdr.unpack(hdr)[6], Elf64_Ehdr.unpack(hdr)[11], Elf64_Ehdr.unpack(hdr)[12]
    if shentsize != Elf64_Shdr.size or not 0 < shnum < 4096:
        return []
    table = _pread(fd, shnum * Elf64_Shdr.size, shoff)
    if not table:
        return []
    sections = [Elf64_Shdr.unpack_from(table, i * Elf64_Shdr.size) for i in range(shnum)]
    funcs = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != SHT_SYMTAB or entsize != Elf64_Sym.size or link >= shnum:
            continue
        syms = _pread(fd, size - size % Elf64_Sym.size, offset)
        strtab = _pread(fd, sections[link][5], sections[link][4])
        for at in range(0, len(syms), Elf64_Sym.size):
            st_name, st_info, _other, shndx, value, st_size = Elf64_Sym.unpack_from(syms, at)
            if st_info & 0xF != STT_FUNC or value == 0 or shndx == 0 or st_name >= len(strtab):
                continue
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end if end >= 0 else len(strtab)].decode("utf-8", "replace")
            if name:
                funcs.append((value, st_size, name))
    return funcs
