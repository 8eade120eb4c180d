"""elfgen.py: build small synthetic hvt ELF images in memory for loader tests."""
import struct

from ukvm.machine.elf import NOTE_ABI1, NOTE_MFT1, Elf64_Ehdr, Elf64_Phdr
from ukvm.machine.manifest import MFT_RESERVED_FIRST, Entry, Manifest


def note(n_type: int, desc: bytes, namesz: int = 6, name: bytes = b"Solo5\0\0\0") -> bytes:
    return struct.pack("<III", namesz, len(desc), n_type) + name + desc


def abi_note(target: int = 1, version: int = 2) -> bytes:
    return note(NOTE_ABI1, struct.pack("<IIII", target, version, 0, 0))


def manifest_payload(*devices: tuple[str, int]) -> bytes:
    entries = [Entry(0, "", MFT_RESERVED_FIRST)] + [Entry(i + 1, n, t) for i, (n, t) in enumerate(devices)]
    return Manifest(entries).pack()


def mft_note(payload: bytes | None = None) -> bytes:
    payload = manifest_payload() if payload is None else payload
    return note(NOTE_MFT1, bytes(4) + payload)   # 4 pad bytes align the manifest to 8


def make_elf(segments=None, notes=None, entry=0x100000, e_type=2, machine=62, phentsize=56,
             ident=b"\x7fELF\x02\x01\x01") -> bytes:
    """segments: list of (p_vaddr, data, p_memsz, p_flags, p_align); notes: list of note blobs."""
    if segments is None:
        segments = [(0x100000, b"\xf4" * 16, 16, 1, 0x1000)]   # hlt
    if notes is None:
        notes = [abi_note(), mft_note()]
    phdrs = []
    blobs = bytearray()
    nph = len(segments) + len(notes)
    base = 0x1000
    for vaddr, data, memsz, flags, align in segments:
        off = base + len(blobs)
        blobs += data + bytes(-len(data) % 0x1000)
        phdrs.append(Elf64_Phdr.pack(1, flags, off, vaddr, vaddr, len(data), memsz, align))
    for blob in notes:
        off = base + len(blobs)
        blobs += blob + bytes(-len(blob) % 8)
        phdrs.append(Elf64_Phdr.pack(4, 4, off, 0, 0, len(blob), len(blob), 4))
    ehdr = Elf64_Ehdr.pack(ident.ljust(16, b"\0"), e_type, machine, 1, entry, 64, 0, 0, 64, phentsize,
                           nph, 0, 0, 0)
    head = ehdr + b"".join(phdrs)
    return head + bytes(base - len(head)) + bytes(blobs)
