"""vcpu.py: x86_64 long-mode entry state for an hvt guest (hvt-abi.md sections 5.3-6).

Identity page tables and the tender GDT are written into guest low memory; the vCPU gets
control registers, segments, general registers and the host's supported CPUID list.
"""
import os
import struct

from ukvm import hvt_abi as hvt
from ukvm.errors import KvmError
from ukvm.kvm import abi
from ukvm.kvm.ioctls import Kvm, VcpuFd
from ukvm.machine.memory import GuestMemory

PTE_P = 0x1
PTE_RW = 0x2
PTE_US = 0x4
PTE_PS = 0x80
PAGE_2M = 2 << 20

X86_CR0_PE = 1 << 0
X86_CR0_NE = 1 << 5
X86_CR0_WP = 1 << 16
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
X86_CR4_OSFXSR = 1 << 9
X86_CR4_OSXMMEXCPT = 1 << 10
X86_CR4_FSGSBASE = 1 << 16
X86_CR4_OSXSAVE = 1 << 18
XCR0_X87_SSE_AVX = 0x7
X86_EFER_LME = 1 << 8
X86_EFER_LMA = 1 << 10
X86_RFLAGS_RESERVED = 1 << 1

GDT_CODE64 = 0x00AF99000000FFFF   # selector 0x08
GDT_DATA = 0x00CF93000000FFFF     # selector 0x10
SEL_CODE = 0x08
SEL_DATA = 0x10


def host_emulates_cpl0() -> bool:
    """kvm_pvm emulates guest CPL0 code an instruction at a time and runs CPL3 natively (docs/pvm.md)."""
    return os.path.exists("/sys/module/kvm_pvm")


def _qwords(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def write_page_tables(mem: GuestMemory, user: bool = False) -> None:
    """Identity-map the whole allocation: 2 MiB pages, with a 4 KiB table for the first 2 MiB.

    `user` adds the U/S bit everywhere (guests that run at CPL3); upstream guests get exactly the
    hvt tables, without it."""
    p, rw = PTE_P | (PTE_US if user else 0), PTE_RW
    mem.host_write(hvt.HVT_PML4_BASE, _qwords([hvt.HVT_PDPT_BASE | p | rw]))
    mem.host_write(hvt.HVT_PDPT_BASE, _qwords([hvt.HVT_PD_BASE + i * 0x1000 | p | rw for i in range(4)]))
    pd = [hvt.HVT_PT0_BASE | p | rw]
    pd += [n * PAGE_2M | p | rw | PTE_PS for n in range(1, mem.size // PAGE_2M)]
    mem.host_write(hvt.HVT_PD_BASE, _qwords(pd))
    # PT0: nothing below 0x10000, boot area read-only, 0x100000-0x1fffff read-write.
    pt0 = [0] * 16
    pt0 += [gpa | p for gpa in range(hvt.HVT_BOOT_INFO_BASE, hvt.HVT_GUEST_MIN_BASE, 0x1000)]
    pt0 += [gpa | p | rw for gpa in range(hvt.HVT_GUEST_MIN_BASE, PAGE_2M, 0x1000)]
    mem.host_write(hvt.HVT_PT0_BASE, _qwords(pt0))


def write_gdt(mem: GuestMemory) -> None:
    mem.host_write(hvt.HVT_GDT_BASE, _qwords([0, GDT_CODE64, GDT_DATA]))


def _segment(selector: int, code: bool) -> abi.kvm_segment:
    return abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector, type=9 if code else 3,
                           present=1, dpl=0, db=0 if code else 1, s=1, l=1 if code else 0, g=1)


def initial_sregs() -> abi.kvm_sregs:
    sregs = abi.kvm_sregs()
    sregs.cs = _segment(SEL_CODE, code=True)
    data = _segment(SEL_DATA, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = abi.kvm_segment(type=11, present=1)
    sregs.ldt = abi.kvm_segment(unusable=1)
    sregs.gdt.base = hvt.HVT_GDT_BASE
    sregs.gdt.limit = 3 * 8 - 1
    sregs.cr0 = X86_CR0_PE | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG
    sregs.cr3 = hvt.HVT_PML4_BASE
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT
    sregs.efer = X86_EFER_LME | X86_EFER_LMA
    return sregs


def setup_vcpu(kvm: Kvm, vcpu: VcpuFd, entry: int, mem_limit: int, cpl3: bool = False,
               sregs: abi.kvm_sregs | None = None) -> bool:
    """Put the vCPU at `entry` in 64-bit mode, stack just below `mem_limit`, boot info in RDI.

    With `cpl3`, also enable what code at CPL3 needs and KVM allows: CR4.FSGSBASE (TLS without
    wrmsr) and, if possible, CR4.OSXSAVE with XCR0 = x87|SSE|AVX. Returns whether CPL3 is usable
    (FSGSBASE accepted); otherwise the state is exactly the hvt one, or `sregs` when given (the
    supervisor's)."""
    vcpu.set_cpuid2(kvm.supported_cpuid())
    sregs = sregs if sregs is not None else initial_sregs()
    usable = False
    if cpl3:
        for extra in (X86_CR4_FSGSBASE | X86_CR4_OSXSAVE, X86_CR4_FSGSBASE):
            sregs.cr4 |= extra
            try:
                vcpu.set_sregs(sregs)
            except KvmError:
                sregs.cr4 &= ~extra
                continue
            usable = True
            if extra & X86_CR4_OSXSAVE:
                try:
                    vcpu.set_xcr0(XCR0_X87_SSE_AVX)
                except KvmError:
                    pass     # AVX stays off; SSE does not depend on XCR0
            break
    if not usable:
        vcpu.set_sregs(sregs)
    regs = abi.kvm_regs(rip=entry, rsp=mem_limit - 8, rdi=hvt.HVT_BOOT_INFO_BASE, rflags=X86_RFLAGS_RESERVED)
    vcpu.set_regs(regs)
    return usable
