"""supervisor.py: unmodified Solo5 guests at CPL3 under ukvm's CPL0 supervisor (docs/cpl3.md).

The supervisor (runtime/supervisor/) is C and assembly, compiled into a flat image when the
package is built (setup.py's build hook, ukvm.toolchain.supervisor_image) and shipped beside its
sources with the image's SHA-256; loading it needs no compiler and refuses an image whose hash
differs. For a guest that runs under it, the tender loads that image below
0x10000 in pages hvt leaves unmapped, writes the real GDT, IDT and TSS, makes every guest page
user-accessible and the supervisor's pages not, and starts the vCPU directly at CPL3 on the
guest's entry point. The guest's privileged instructions and exceptions go to the supervisor;
what it cannot handle comes back to the tender as a report (one `out` to SV_REPORT_PORT).
"""
from __future__ import annotations

import os
import struct

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault, UkvmError
from ukvm.kvm import abi
from ukvm.machine.memory import GuestMemory
from ukvm.machine.vcpu import PTE_P, PTE_RW, initial_sregs

try:                                    # the C module alone: hashlib would add ~3-8 ms of OpenSSL
    from _sha256 import sha256          # (3.11)
except ImportError:                     # pragma: no cover - other interpreters
    try:
        from _sha2 import sha256        # (3.12+)
    except ImportError:
        from hashlib import sha256

SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "runtime", "supervisor")
SOURCES = ("layout.h", "entry.S", "supervisor.c", "supervisor.lds")

# Mirrors runtime/supervisor/layout.h (tests/unit/test_supervisor.py compares them).
SV_BASE = 0x9000
SV_STUB_STRIDE = 16
SV_CODE_END = 0xC000
SV_STATE = 0xC000
SV_IDT = 0xC400
SV_TSS = 0xC800
SV_STACK_BASE = 0xD000
SV_STACK_TOP = 0xF000
SV_DF_STACK_TOP = 0x10000
SV_REPORT_PORT = 0x5FE
SV_DEBUG_PORT = 0x5FD
SV_REPORT_SHUTDOWN = 1
SV_REPORT_HLT = 2
SV_REPORT_PORT_IO = 3
SV_REPORT_UNSUPPORTED = 4
SV_REPORT_INTERNAL = 5

STATE_FIELDS = (
    "mem_end", "read_min", "write_min", "cr0", "cr2", "cr3", "cr4", "cr8",
    "gdt_base", "gdt_limit", "idt_base", "idt_limit", "tr", "tss_base", "ldtr", "cs", "ss",
    "vif", "kernel_gs_base",
    "report_reason", "report_vector", "report_ec", "report_rip", "report_arg", "report_insn",
    "n_emulated", "n_delivered", "report_frame", "debug")
STATE = struct.Struct(f"<{len(STATE_FIELDS)}Q")

# The real GDT (at hvt's GDT address). The guest's flat code and data sit at hvt's indices with
# DPL 3, so the selectors it sees are hvt's with RPL 3 (CS 0x0b, SS 0x13) and it may reload DS/ES
# with 0x10 itself; the supervisor's segments and the TSS follow.
USER_CS, USER_SS, USER_DS = 0x0B, 0x13, 0x10
SV_CS, SV_DS, SV_TR = 0x18, 0x20, 0x28
GDT = (0, 0x00AFF9000000FFFF, 0x00CFF3000000FFFF, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)

# TSS: 104 bytes, then an I/O permission bitmap that opens exactly the hypercall ports (and the
# ring kick) to CPL3, so hypercalls exit to the tender without a trap; a 0xff byte ends it. A
# 32-bit `out` to port P needs the bits of P to P+3 clear.
TSS_HEADER = 104
IO_BITMAP_PORTS = 0x800
RING_KICK_PORT = 0x600
OPEN_PORTS = sorted({base + nr + byte
                     for base, count in ((hvt.HVT_HYPERCALL_PIO_BASE, hvt.HVT_HYPERCALL_MAX), (RING_KICK_PORT, 1))
                     for nr in range(count) for byte in range(4)})
TSS_SIZE = TSS_HEADER + IO_BITMAP_PORTS // 8 + 1
IST_DF = 1
VECTORS = 32

# hvt's entry state as the guest believes it (hvt-abi.md 5.4, 6).
HVT_CR0, HVT_CR4 = 0x80010021, 0x620
HVT_CS, HVT_SS = 0x08, 0x10


class SupervisorError(UkvmError):
    pass


# What the build hook writes next to the sources: the flat image, and one line with the image's
# SHA-256 and the SHA-256 of the sources it was built from.
IMAGE_PATH = os.path.join(SRC_DIR, "supervisor.bin")
DIGEST_PATH = os.path.join(SRC_DIR, "supervisor.sha256")


def sources_digest() -> str | None:
    """SHA-256 over the supervisor's sources (None where they are not installed)."""
    h = sha256()
    try:
        for name in SOURCES:
            with open(os.path.join(SRC_DIR, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    except FileNotFoundError:
        return None
    return h.hexdigest()


def digest_line(data: bytes, sources: str | None) -> str:
    return f"{sha256(data).hexdigest()} {sources or '-'}\n"


def image() -> bytes:
    """The supervisor's flat image as the package was built with it, checked against the hash
    recorded at build time. Refused (one line) when missing, altered, or older than its sources."""
    try:
        with open(IMAGE_PATH, "rb") as f:
            data = f.read()
        with open(DIGEST_PATH) as f:
            recorded = f.read().split()
    except FileNotFoundError as e:
        raise SupervisorError(f"the CPL3 supervisor image {e.filename} is missing: this copy of ukvm was "
                              "not built (pip install ., or pip install -e . in a checkout); "
                              "or run with --x-guest-cpl=0") from None
    if len(recorded) != 2 or recorded[0] != sha256(data).hexdigest():
        raise SupervisorError(f"the CPL3 supervisor image {IMAGE_PATH} does not match the hash recorded when "
                              "ukvm was built: refusing to load it (reinstall ukvm, or run with --x-guest-cpl=0)")
    sources = sources_digest()
    if sources is not None and recorded[1] not in (sources, "-"):
        raise SupervisorError(f"the CPL3 supervisor image {IMAGE_PATH} was built from other sources than those "
                              "beside it: rebuild it (pip install -e .)")
    return data


def _segment(selector: int, dpl: int, code: bool) -> abi.kvm_segment:
    return abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector, type=9 if code else 3, present=1,
                           dpl=dpl, db=0 if code else 1, s=1, l=1 if code else 0, g=1)


def _gate(vector: int) -> bytes:
    handler = SV_BASE + SV_STUB_STRIDE * vector
    ist = IST_DF if vector in (2, 8, 18) else 0
    lo = ((handler & 0xFFFF) | SV_CS << 16 | ist << 32 | 0x8E << 40 | ((handler >> 16) & 0xFFFF) << 48)
    return struct.pack("<QQ", lo, handler >> 32)


def _tss() -> bytes:
    tss = bytearray(TSS_SIZE)
    struct.pack_into("<Q", tss, 4, SV_STACK_TOP)                   # RSP0
    struct.pack_into("<Q", tss, 0x24 + 8 * (IST_DF - 1), SV_DF_STACK_TOP)
    struct.pack_into("<H", tss, 102, TSS_HEADER)                   # I/O bitmap offset
    bitmap = bytearray(b"\xff" * (IO_BITMAP_PORTS // 8 + 1))
    for port in OPEN_PORTS:
        bitmap[port // 8] &= ~(1 << port % 8)
    tss[TSS_HEADER:] = bitmap
    return bytes(tss)


def _tss_descriptor() -> tuple[int, int]:
    base, limit = SV_TSS, TSS_SIZE - 1
    lo = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x8B << 40 | ((limit >> 16) & 0xF) << 48 | ((base >> 24) & 0xFF) << 56
    return lo, base >> 32


def install(mem: GuestMemory, code: bytes) -> abi.kvm_sregs:
    """Turn hvt's entry state in memory (page tables, GDT) into the supervised one; returns the
    special registers the vCPU starts with (general registers stay hvt's)."""
    mem.host_write(SV_BASE, code)
    mem.host_write(hvt.HVT_GDT_BASE, struct.pack("<7Q", *GDT, *_tss_descriptor()))
    mem.host_write(SV_IDT, b"".join(_gate(v) for v in range(VECTORS)))
    mem.host_write(SV_TSS, _tss())
    state = dict.fromkeys(STATE_FIELDS, 0)
    state.update(mem_end=mem.size, read_min=hvt.HVT_BOOT_INFO_BASE, write_min=hvt.HVT_GUEST_MIN_BASE,
                 cr0=HVT_CR0, cr3=hvt.HVT_PML4_BASE, cr4=HVT_CR4, gdt_base=hvt.HVT_GDT_BASE,
                 gdt_limit=3 * 8 - 1, cs=HVT_CS, ss=HVT_SS)
    mem.host_write(SV_STATE, STATE.pack(*(state[f] for f in STATE_FIELDS)))
    # Page tables: hvt's, user-accessible, plus the supervisor's pages (GDT, code, tables,
    # stacks) present for CPL0 only.
    pt0 = b"".join(struct.pack("<Q", gpa | PTE_P | PTE_RW) for gpa in range(SV_BASE, SV_DF_STACK_TOP, 0x1000))
    mem.host_write(hvt.HVT_PT0_BASE + 8 * (SV_BASE >> 12), pt0)
    mem.host_write(hvt.HVT_PT0_BASE + 8 * (hvt.HVT_GDT_BASE >> 12),
                   struct.pack("<Q", hvt.HVT_GDT_BASE | PTE_P | PTE_RW))

    sregs = initial_sregs()
    sregs.cs = _segment(USER_CS, 3, code=True)
    sregs.ss = _segment(USER_SS, 3, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = _segment(USER_DS, 3, code=False)
    sregs.tr = abi.kvm_segment(base=SV_TSS, limit=TSS_SIZE - 1, selector=SV_TR, type=11, present=1)
    sregs.gdt.limit = len(GDT) * 8 + 16 - 1
    sregs.idt.base = SV_IDT
    sregs.idt.limit = VECTORS * 16 - 1
    return sregs


# struct frame of supervisor.c: the guest's registers when it trapped (ModRM order, RSP slot
# unused), vector, error code, then what the CPU pushed.
FRAME_GPRS = ("rax", "rcx", "rdx", "rbx", None, "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
FRAME = struct.Struct("<16Q2Q5Q")


def reported_guest_regs(mem: GuestMemory) -> dict[str, int] | None:
    """The guest's registers at the instruction the supervisor reported on, or None without a
    report (for core dumps: the vCPU itself then sits in the supervisor)."""
    st = state(mem)
    frame = st["report_frame"]
    if not st["report_reason"] or not SV_STACK_BASE <= frame <= SV_DF_STACK_TOP - FRAME.size:
        return None
    values = FRAME.unpack(mem.host_read(frame, FRAME.size))
    regs = {name: v for name, v in zip(FRAME_GPRS, values) if name}
    regs.update(rip=values[18], eflags=values[20], rsp=values[21], cs=st["cs"], ss=st["ss"])
    return regs


def state(mem: GuestMemory) -> dict[str, int]:
    return dict(zip(STATE_FIELDS, STATE.unpack(mem.host_read(SV_STATE, STATE.size))))


def report_error(mem: GuestMemory) -> GuestFault:
    """The fatal error a supervisor report stands for, worded as the tender's own messages."""
    st = state(mem)
    reason, rip, arg = st["report_reason"], st["report_rip"], st["report_arg"]
    if reason == SV_REPORT_SHUTDOWN:     # what hardware KVM reports for a triple fault
        return GuestFault(f"KVM: unhandled exit: exit_reason=0x8, rip={rip:#x}")
    if reason == SV_REPORT_HLT:          # KVM_EXIT_HLT leaves RIP after the instruction
        return GuestFault(f"KVM: unhandled exit: exit_reason=0x5, rip={rip + 1:#x}")
    if reason == SV_REPORT_PORT_IO:
        return GuestFault(f"Invalid guest port access: port={arg:#x}")
    if reason == SV_REPORT_UNSUPPORTED:
        code = st["report_insn"].to_bytes(8, "little")[:min(arg, 8)].hex(" ")
        return GuestFault(f"supervisor: privileged instruction not emulated at rip={rip:#x} (bytes {code}); "
                          "run this guest at CPL0 with --x-guest-cpl=0")
    if reason == SV_REPORT_INTERNAL:
        return GuestFault(f"supervisor: internal fault: vector {st['report_vector']} ec={st['report_ec']:#x} "
                          f"rip={rip:#x} cr2={arg:#x}")
    return GuestFault(f"supervisor: unknown report {reason}")
