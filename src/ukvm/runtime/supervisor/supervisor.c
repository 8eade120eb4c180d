/*
 * supervisor.c: runs an unmodified Solo5 hvt guest at CPL3 (docs/cpl3.md).
 *
 * The guest believes it runs at CPL0 on hvt's entry state. Its privileged instructions fault
 * (#GP, #UD) into this code, which keeps a virtual copy of what the guest thinks it loaded
 * (descriptor tables, TR, CS/SS selectors, IF, CR2, the TLS base MSRs) and steps over them; the
 * guest's own exceptions are delivered to the guest's own IDT handlers with the frame a CPU at
 * CPL0 would push. Anything else ends the run through a report to the tender, never a hang.
 *
 * It runs at CPL0, which kvm_pvm emulates an instruction at a time: general registers only,
 * short paths. Every guest address is checked against the user-mapped range before use.
 */
#include "layout.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef u16 __attribute__((may_alias, aligned(1))) u16u;
typedef u64 __attribute__((may_alias, aligned(1))) u64u;

struct frame {                    /* supervisor.py FRAME reads it for core dumps */
    u64 gpr[16];          /* rax rcx rdx rbx rsp rbp rsi rdi r8-r15; [4] is a dummy: see gpr() */
    u64 vector, ec;
    u64 rip, cs, rflags, rsp, ss;
};

#define ST ((struct sv_state *)SV_STATE)
_Static_assert(SV_STATE + __builtin_offsetof(struct sv_state, n_emulated) == SV_STATE_N_EMULATED,
               "layout.h: SV_STATE_N_EMULATED");

#define RFLAGS_TF (1ULL << 8)
#define RFLAGS_IF (1ULL << 9)
#define RFLAGS_IOPL (3ULL << 12)
#define RFLAGS_NT (1ULL << 14)
#define RFLAGS_RF (1ULL << 16)
/* Flags a return to the guest may set: arithmetic, TF, DF, AC, ID and RF. */
#define RFLAGS_USER 0x250dd5ULL

#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define MSR_KERNEL_GS_BASE 0xc0000102

#define PF_PRESENT 0x1
#define PF_WRITE 0x2
#define PF_USER 0x4
#define NO_EC (~0ULL)

enum { VEC_DB = 1, VEC_BP = 3, VEC_UD = 6, VEC_DF = 8, VEC_GP = 13, VEC_PF = 14 };

void sv_trap(struct frame *f);

static void __attribute__((noreturn)) report(struct frame *f, u64 reason, u64 arg)
{
    ST->report_vector = f->vector;
    ST->report_ec = f->ec;
    ST->report_rip = f->rip;
    ST->report_arg = arg;
    ST->report_frame = (u64)(uintptr_t)f;
    ST->report_reason = reason;
    for (;;)
        __asm__ __volatile__("outl %%eax, %%dx" : : "a"((u32)reason), "d"((u16)SV_REPORT_PORT));
}

/* Under --gdb: the debugger's stop. The tender reads and may change the guest's registers in
 * `f` while the vCPU sits at this `out`; returning resumes the guest with them. */
static void debug_stop(struct frame *f)
{
    __asm__ __volatile__("outl %%eax, %%dx" : : "a"((u32)(uintptr_t)f), "d"((u16)SV_DEBUG_PORT) : "memory");
}

static u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static void wrmsr(u32 msr, u64 value)
{
    __asm__ __volatile__("wrmsr" : : "c"(msr), "a"((u32)value), "d"((u32)(value >> 32)));
}

/* The guest's view of its memory is hvt's: [read_min, mem_end) readable, from write_min on
 * writable; everything below read_min (our pages among them) looks not present. */
static int readable(u64 addr, u64 len)
{
    return addr >= ST->read_min && len <= ST->mem_end && addr <= ST->mem_end - len;
}

static int writable(u64 addr, u64 len)
{
    return addr >= ST->write_min && readable(addr, len);
}

static int canonical(u64 addr)
{
    return (u64)((int64_t)(addr << 16) >> 16) == addr;
}

static u64 gpr(struct frame *f, unsigned i)
{
    return i == 4 ? f->rsp : f->gpr[i];
}

static void set_gpr(struct frame *f, unsigned i, u64 value)
{
    if (i == 4)
        f->rsp = value;
    else
        f->gpr[i] = value;
}

/* --- delivering the guest's exceptions to its own handlers ------------------------------------ */

static int has_error_code(u64 vec)
{
    return vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30;
}

/* Push the frame a CPU at CPL0 pushes in 64-bit mode and enter the gate's handler; 0 if the
 * gate, the stack or the handler cannot be used (the CPU would fault during delivery). */
static int try_deliver(struct frame *f, u64 vec, u64 ec, u64 rip)
{
    if (vec * 16 + 15 > ST->idt_limit || !readable(ST->idt_base + vec * 16, 16))
        return 0;
    u64 lo = *(u64u *)(ST->idt_base + vec * 16), hi = *(u64u *)(ST->idt_base + vec * 16 + 8);
    unsigned attr = (lo >> 40) & 0xff, ist = (lo >> 32) & 7;
    if (!(attr & 0x80) || ((attr & 0xf) != 0xe && (attr & 0xf) != 0xf))
        return 0;
    u64 target = (lo & 0xffff) | ((lo >> 32) & 0xffff0000ULL) | (hi << 32);
    if (!canonical(target))
        return 0;
    u64 sp = f->rsp;
    if (ist) {
        u64 slot = ST->tss_base + 0x24 + 8 * (ist - 1);
        if (ST->tr == 0 || !readable(slot, 8))
            return 0;
        sp = *(u64u *)slot;
    }
    u64 size = ec == NO_EC ? 40 : 48;
    sp = (sp & ~15ULL) - size;
    if (!writable(sp, size))
        return 0;
    u64 *s = (u64 *)sp;
    if (ec != NO_EC)
        *s++ = ec;
    s[0] = rip;
    s[1] = ST->cs;
    s[2] = (f->rflags & ~(RFLAGS_IF | RFLAGS_IOPL)) | (ST->vif ? RFLAGS_IF : 0);
    s[3] = f->rsp;
    s[4] = ST->ss;
    f->rip = target;
    f->rsp = sp;
    f->rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF);
    if ((attr & 0xf) == 0xe)
        ST->vif = 0;
    ST->n_delivered++;
    return 1;
}

/* A fault while delivering becomes #DF, a fault while delivering #DF a shutdown, as on a CPU. */
static void deliver(struct frame *f, u64 vec, u64 ec, u64 rip)
{
    if (try_deliver(f, vec, ec, rip))
        return;
    if (vec != VEC_DF && try_deliver(f, VEC_DF, 0, rip))
        return;
    report(f, SV_REPORT_SHUTDOWN, vec);
}

/* A page fault as the guest would have seen it at CPL0 on hvt's page tables. */
static void page_fault(struct frame *f, u64 addr, u64 ec)
{
    ec &= ~(u64)PF_USER;
    if (addr < ST->read_min)
        ec &= ~(u64)PF_PRESENT;
    ST->cr2 = addr;
    deliver(f, VEC_PF, ec, f->rip);
}

/* --- decoding ------------------------------------------------------------------------------- */

struct insn {
    u8 b[16] __attribute__((aligned(8)));
    unsigned len, i;      /* bytes fetched, bytes consumed */
    unsigned rex, opsize16, addr32, seg;
    unsigned mod, reg, rm;
};

/* Fetch what may be the instruction at RIP: it just faulted there, so its first byte is mapped.
 * Two loads in the common case: every instruction here costs a microsecond on kvm_pvm. */
static void fetch(struct frame *f, struct insn *in)
{
    in->i = in->rex = in->opsize16 = in->addr32 = in->seg = 0;
    if (readable(f->rip, 16)) {
        ((u64 *)in->b)[0] = *(u64u *)f->rip;
        ((u64 *)in->b)[1] = *(u64u *)(f->rip + 8);
        in->len = 15;
        return;
    }
    in->len = 0;
    while (in->len < 15 && readable(f->rip + in->len, 1)) {
        in->b[in->len] = *(u8 *)(f->rip + in->len);
        in->len++;
    }
}

static int next(struct insn *in, u8 *out)
{
    if (in->i >= in->len)
        return 0;
    *out = in->b[in->i++];
    return 1;
}

/* Legacy prefixes and REX; leaves the opcode's first byte in *op. */
static int prefixes(struct insn *in, u8 *op)
{
    for (;;) {
        if (!next(in, op))
            return 0;
        switch (*op) {
        case 0x66: in->opsize16 = 1; continue;
        case 0x67: in->addr32 = 1; continue;
        case 0x64: in->seg = MSR_FS_BASE; continue;
        case 0x65: in->seg = MSR_GS_BASE; continue;
        case 0x26: case 0x2e: case 0x36: case 0x3e: case 0xf0: case 0xf2: case 0xf3: continue;
        }
        if ((*op & 0xf0) == 0x40) {
            in->rex = *op;
            if (!next(in, op))
                return 0;
        }
        return 1;
    }
}

static int modrm(struct insn *in)
{
    u8 m;
    if (!next(in, &m))
        return 0;
    in->mod = m >> 6;
    in->reg = ((m >> 3) & 7) | ((in->rex & 4) << 1);
    in->rm = (m & 7) | ((in->rex & 1) << 3);
    return 1;
}

static int disp(struct insn *in, unsigned n, int64_t *out)
{
    u64 v = 0;
    for (unsigned k = 0; k < n; k++) {
        u8 byte;
        if (!next(in, &byte))
            return 0;
        v |= (u64)byte << (8 * k);
    }
    *out = n == 1 ? (int8_t)v : (int32_t)v;
    return 1;
}

/* The effective address of a ModRM memory operand; `imm` immediate bytes follow it. */
static int effective_address(struct frame *f, struct insn *in, unsigned imm, u64 *out)
{
    u64 addr = 0;
    int64_t d = 0;
    int rip_relative = 0;
    if ((in->rm & 7) == 4) {
        u8 sib;
        if (!next(in, &sib))
            return 0;
        unsigned base = (sib & 7) | ((in->rex & 1) << 3);
        unsigned index = ((sib >> 3) & 7) | ((in->rex & 2) << 2);
        if (index != 4)
            addr += gpr(f, index) << (sib >> 6);
        if ((base & 7) == 5 && in->mod == 0) {
            if (!disp(in, 4, &d))
                return 0;
        } else {
            addr += gpr(f, base);
        }
    } else if ((in->rm & 7) == 5 && in->mod == 0) {
        rip_relative = 1;
        if (!disp(in, 4, &d))
            return 0;
    } else {
        addr = gpr(f, in->rm);
    }
    if (in->mod == 1 && !disp(in, 1, &d))
        return 0;
    if (in->mod == 2 && !disp(in, 4, &d))
        return 0;
    addr += (u64)d;
    if (rip_relative)
        addr += f->rip + in->i + imm;
    if (in->addr32)
        addr = (u32)addr;
    if (in->seg)
        addr += rdmsr(in->seg);
    *out = addr;
    return 1;
}

/* A 16-bit r/m operand (ltr, lldt, mov to a segment register). */
static int read_rm16(struct frame *f, struct insn *in, u16 *out)
{
    if (in->mod == 3) {
        *out = (u16)gpr(f, in->rm);
        return 1;
    }
    u64 addr;
    if (!effective_address(f, in, 0, &addr))
        return 0;
    if (!readable(addr, 2)) {
        page_fault(f, addr, 0);
        return -1;
    }
    *out = *(u16u *)addr;
    return 1;
}

/* --- emulation ------------------------------------------------------------------------------ */

static void __attribute__((noreturn)) unsupported(struct frame *f, struct insn *in)
{
    u64 bytes = 0;
    for (unsigned k = 0; k < in->len && k < 8; k++)
        bytes |= (u64)in->b[k] << (8 * k);
    ST->report_insn = bytes;
    report(f, SV_REPORT_UNSUPPORTED, in->len);
}

static void done(struct frame *f, struct insn *in)
{
    f->rip += in->i;
    f->rflags &= ~RFLAGS_RF;
    ST->n_emulated++;
}

static int msr_slot(struct frame *f, u64 **slot, u32 *real)
{
    *slot = 0;
    *real = 0;
    switch ((u32)f->gpr[1]) {
    case MSR_FS_BASE: *real = MSR_FS_BASE; return 1;
    case MSR_GS_BASE: *real = MSR_GS_BASE; return 1;
    case MSR_KERNEL_GS_BASE: *slot = &ST->kernel_gs_base; return 1;
    }
    return 0;
}

static u64 *control_register(unsigned n)
{
    switch (n) {
    case 0: return &ST->cr0;
    case 2: return &ST->cr2;
    case 3: return &ST->cr3;
    case 4: return &ST->cr4;
    case 8: return &ST->cr8;
    }
    return 0;
}

/* ltr: the selector must name an available 64-bit TSS in the guest's GDT; it becomes busy. */
static int load_tr(u16 sel)
{
    u64 at = ST->gdt_base + (sel & ~7u);
    if (!(sel & ~3u) || (sel & 4) || (sel | 7u) + 8 > ST->gdt_limit || !writable(at, 16))
        return 0;
    u64 lo = *(u64u *)at, hi = *(u64u *)(at + 8);
    if (((lo >> 40) & 0x9f) != 0x89)
        return 0;
    *(u64u *)at = lo | (2ULL << 40);
    ST->tss_base = ((lo >> 16) & 0xffffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
    ST->tr = sel;
    return 1;
}

static void far_return(struct frame *f, struct insn *in, int wide, u64 release)
{
    u64 n = wide ? 8 : 4, sp = f->rsp;
    if (!readable(sp, 2 * n)) {
        page_fault(f, sp, 0);
        return;
    }
    u64 rip = wide ? *(u64u *)sp : *(u32 *)sp;
    u64 cs = wide ? *(u64u *)(sp + 8) : *(u32 *)(sp + 4);
    if (!canonical(rip)) {
        deliver(f, VEC_GP, 0, f->rip);
        return;
    }
    ST->cs = cs & 0xffff;
    done(f, in);
    f->rip = rip;
    f->rsp = sp + 2 * n + release;
}

static void interrupt_return(struct frame *f, struct insn *in)
{
    u64 sp = f->rsp;
    if (!(in->rex & 8))
        unsupported(f, in);       /* a 32-bit iret in 64-bit mode: no Solo5 guest does this */
    if (!readable(sp, 40)) {
        page_fault(f, sp, 0);
        return;
    }
    u64 *s = (u64 *)sp;
    if (!canonical(s[0]) || !canonical(s[3]) || (s[2] & RFLAGS_NT)) {
        deliver(f, VEC_GP, 0, f->rip);
        return;
    }
    ST->cs = s[1] & 0xffff;
    ST->ss = s[4] & 0xffff;
    ST->vif = !!(s[2] & RFLAGS_IF);
    done(f, in);
    f->rip = s[0];
    f->rflags = (s[2] & RFLAGS_USER) | 2;
    f->rsp = s[3];
}

/* The instruction at RIP raised #GP at CPL3: emulate it if the guest could run it at CPL0. */
static void general_protection(struct frame *f)
{
    struct insn in;
    u8 op, op2;
    fetch(f, &in);
    if (!prefixes(&in, &op))
        goto reflect;
    switch (op) {
    case 0xfa: done(f, &in); ST->vif = 0; return;                         /* cli */
    case 0xfb: done(f, &in); ST->vif = 1; return;                         /* sti */
    case 0xf4: report(f, SV_REPORT_HLT, 0);                               /* hlt */
    case 0xcb: far_return(f, &in, in.rex & 8, 0); return;                 /* lret */
    case 0xca: {                                                          /* lret imm16 */
        u8 lo, hi;
        if (!next(&in, &lo) || !next(&in, &hi))
            goto reflect;
        far_return(f, &in, in.rex & 8, lo | (hi << 8));
        return;
    }
    case 0xcf: interrupt_return(f, &in); return;                          /* iretq */
    case 0xcc: case 0xcd:                                                 /* int3, int n */
        if (op == 0xcc && ST->debug && (f->ec & 3) == 2) {     /* the debugger's breakpoint */
            debug_stop(f);
            return;
        }
        if ((f->ec & 3) == 2) {
            u8 vec = 3;
            if (op == 0xcd && !next(&in, &vec))
                goto reflect;
            u64 ret = f->rip + in.i;
            ST->n_emulated++;
            deliver(f, vec, has_error_code(vec) ? 0 : NO_EC, ret);
            return;
        }
        goto reflect;
    case 0xe4: case 0xe5: case 0xe6: case 0xe7: {                         /* in/out imm8 */
        u8 port;
        if (!next(&in, &port))
            goto reflect;
        report(f, SV_REPORT_PORT_IO, port);
    }
    case 0x6c: case 0x6d: case 0x6e: case 0x6f:                           /* ins/outs */
    case 0xec: case 0xed: case 0xee: case 0xef:                           /* in/out dx */
        report(f, SV_REPORT_PORT_IO, (u16)f->gpr[2]);
    case 0x8e: {                                                          /* mov sreg, r/m16 */
        u16 sel;
        int r;
        if (!modrm(&in) || (r = read_rm16(f, &in, &sel)) == 0)
            goto reflect;
        if (r < 0)
            return;
        if ((in.reg & 7) == 2)
            ST->ss = sel;
        else if ((in.reg & 7) == 4 || (in.reg & 7) == 5)
            wrmsr((in.reg & 7) == 4 ? MSR_FS_BASE : MSR_GS_BASE, 0);   /* flat descriptors */
        done(f, &in);
        return;
    }
    case 0x0f:
        break;
    default:
        goto reflect;
    }
    if (!next(&in, &op2))
        goto reflect;
    switch (op2) {
    case 0x00: {                                                          /* lldt, ltr */
        u16 sel;
        int r;
        if (!modrm(&in) || ((in.reg & 7) != 2 && (in.reg & 7) != 3))
            goto reflect;
        if ((r = read_rm16(f, &in, &sel)) == 0)
            goto reflect;
        if (r < 0)
            return;
        if ((in.reg & 7) == 2) {
            ST->ldtr = sel;
        } else if (!load_tr(sel)) {
            deliver(f, VEC_GP, sel & 0xfffc, f->rip);
            return;
        }
        done(f, &in);
        return;
    }
    case 0x01: {                                                          /* lgdt, lidt, invlpg */
        u64 addr;
        if (!modrm(&in))
            goto reflect;
        if (in.mod == 3) {
            if (in.reg == 7 && (in.rm & 7) == 0) {                        /* swapgs */
                u64 gs = rdmsr(MSR_GS_BASE);
                wrmsr(MSR_GS_BASE, ST->kernel_gs_base);
                ST->kernel_gs_base = gs;
                done(f, &in);
                return;
            }
            if (in.reg == 2 && (in.rm & 7) == 1) {                        /* xsetbv: CR4.OSXSAVE is clear */
                deliver(f, VEC_UD, NO_EC, f->rip);
                return;
            }
            goto other;
        }
        unsigned kind = in.reg & 7;
        if (kind != 2 && kind != 3 && kind != 7)
            goto reflect;
        if (!effective_address(f, &in, 0, &addr))
            goto reflect;
        if (kind == 7) {
            done(f, &in);
            return;
        }
        if (!readable(addr, 10)) {
            page_fault(f, addr, 0);
            return;
        }
        u64 limit = *(u16u *)addr, base = *(u64u *)(addr + 2);
        if (kind == 2) {
            ST->gdt_base = base;
            ST->gdt_limit = limit;
        } else {
            ST->idt_base = base;
            ST->idt_limit = limit;
        }
        done(f, &in);
        return;
    }
    case 0x06: case 0x08: case 0x09:                                      /* clts, invd, wbinvd */
        done(f, &in);
        return;
    case 0x20: case 0x22: {                                               /* mov from/to CRn */
        u64 *cr;
        if (!modrm(&in) || !(cr = control_register(in.reg)))
            goto other;
        if (op2 == 0x20) {
            set_gpr(f, in.rm, *cr);
        } else if (cr == &ST->cr2) {
            *cr = gpr(f, in.rm);
        } else if (*cr != gpr(f, in.rm)) {
            goto other;        /* paging and CPU modes stay hvt's: not emulated */
        }
        done(f, &in);
        return;
    }
    case 0x30: case 0x32: {                                               /* wrmsr, rdmsr */
        u64 *slot;
        u32 real;
        if (!msr_slot(f, &slot, &real))
            goto other;
        if (op2 == 0x30) {
            u64 value = (f->gpr[2] << 32) | (u32)f->gpr[0];
            if (slot)
                *slot = value;
            else if (canonical(value))
                wrmsr(real, value);
            else {
                deliver(f, VEC_GP, 0, f->rip);
                return;
            }
        } else {
            u64 value = slot ? *slot : rdmsr(real);
            f->gpr[0] = (u32)value;
            f->gpr[2] = value >> 32;
        }
        done(f, &in);
        return;
    }
    }
other:
    /* A privileged instruction hvt would run but the supervisor does not know: stop clearly
     * rather than guess (the tender names it and suggests --x-guest-cpl=0). */
    if (op == 0x0f && (op2 <= 0x01 || op2 == 0x20 || op2 == 0x21 || op2 == 0x22 || op2 == 0x23 ||
                       op2 == 0x30 || op2 == 0x32 || op2 == 0x33))
        unsupported(f, &in);
reflect:
    deliver(f, VEC_GP, f->ec, f->rip);
}

void sv_trap(struct frame *f)
{
    if ((f->cs & 3) == 0) {
        u64 cr2;
        __asm__ __volatile__("movq %%cr2, %0" : "=r"(cr2));
        report(f, SV_REPORT_INTERNAL, cr2);
    }
    switch (f->vector) {
    case VEC_GP: {
        u64 emulated = ST->n_emulated;
        general_protection(f);
        /* Single-stepping over an instruction emulated here: the step ends after it. */
        if (ST->debug && (f->rflags & RFLAGS_TF) && ST->n_emulated != emulated)
            debug_stop(f);
        return;
    }
    case VEC_DB:                /* a single step (TF) or a debug-register hit */
    case VEC_BP:                /* int3, where the host does not check the gate's DPL (kvm_pvm) */
        if (ST->debug) {
            debug_stop(f);
            return;
        }
        deliver(f, f->vector, NO_EC, f->rip);
        return;
    case VEC_PF: {
        u64 cr2;
        __asm__ __volatile__("movq %%cr2, %0" : "=r"(cr2));
        page_fault(f, cr2, f->ec);
        return;
    }
    default:
        deliver(f, f->vector, has_error_code(f->vector) ? f->ec : NO_EC, f->rip);
    }
}
