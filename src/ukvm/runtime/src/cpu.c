/*
 * cpu.c: the runtime's own GDT, TSS and IDT, the drop to CPL3, and the fatal-trap report.
 *
 * Where the tender allows it (boot info UKVM_FEATURE_CPL3) the runtime leaves CPL0 right after
 * setting up its tables: it continues on the same stack at CPL3, the TSS I/O bitmap lets it keep
 * hypercalls a single `out`, and the FS base is written with wrfsbase. Exceptions still enter the CPL0 handlers
 * through the IDT on their IST stacks. Nothing after start-up needs CPL0.
 */
#include "runtime.h"

#define MSR_FS_BASE 0xc0000100
#define SEL_CODE 0x08
#define SEL_DATA 0x10
#define SEL_TSS 0x18
#define SEL_USER_CODE (0x28 | 3)
#define SEL_USER_DATA (0x30 | 3)
#define TRAP_STACK_SIZE 4096
#define NVECTORS 32

/* I/O permission bitmap: a clear bit lets CPL3 code use that port; ports at and above
 * IO_PORTS_ALLOWED lie past the bitmap, and the 0xff byte that must end it, so they fault. */
#define IO_PORTS_ALLOWED 0x800

struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
    uint8_t iomap[IO_PORTS_ALLOWED / 8];
    uint8_t iomap_end;
} __attribute__((packed));

struct idt_gate {
    uint16_t offset_lo;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_hi;
    uint32_t reserved;
};

struct dtr {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

/* Saved by trap_entry (start.S) and pushed by the CPU, lowest address first: the general
 * registers in ModRM order (the RSP slot unused), vector, error code, then the CPU's frame. */
struct trap_regs {
    uint64_t gpr[16];
    uint64_t vector, ec;
    uint64_t rip, cs, rflags, rsp, ss;
};

/* What a fatal trap passes with its abort (the halt cookie; the tender's core dumps read it). */
struct trap_frame {
    uint64_t cr2, ec, rip, cs, rflags, rsp, ss;
};

#define UKVM_DEBUG_PORT 0x5fd
#define GP_EC_IDT_BP ((3 << 3) | 2)    /* #GP for int3 at CPL3 through a DPL 0 gate */
static const struct hvt_boot_info *boot_info;

static uint64_t gdt[7] = {
    0,
    0x00af9b000000ffffULL,  /* 0x08: 64-bit code, DPL 0 */
    0x00cf93000000ffffULL,  /* 0x10: data, DPL 0 */
    0, 0,                   /* 0x18: TSS, filled in below */
    0x00affb000000ffffULL,  /* 0x28: 64-bit code, DPL 3 */
    0x00cff3000000ffffULL,  /* 0x30: data, DPL 3 */
};
static int in_user;
static struct tss tss;
static struct idt_gate idt[NVECTORS];
static uint8_t trap_stack[TRAP_STACK_SIZE] __attribute__((aligned(16)));
static uint8_t fault_stack[TRAP_STACK_SIZE] __attribute__((aligned(16)));  /* NMI, #DF */

extern char ukvm_trap_stubs[];  /* start.S: 16 bytes per vector */

void cpu_set_fs_base(uint64_t base)
{
    if (in_user)
        __asm__ __volatile__("wrfsbase %0" : : "r"(base));
    else
        __asm__ __volatile__("wrmsr" : : "c"(MSR_FS_BASE), "a"((uint32_t)base), "d"((uint32_t)(base >> 32)));
}

/* Continue on the same stack at CPL3. Hypercall ports stay usable through the TSS I/O bitmap
 * (IOPL stays 0: kvm_pvm ignores an IOPL that a guest's iretq sets). */
void cpu_enter_user(void)
{
    __asm__ __volatile__(
        "movq %0, %%rax\n\t"
        "movl %%eax, %%ds\n\t"
        "movl %%eax, %%es\n\t"
        "movq %%rsp, %%rcx\n\t"
        "pushq %q0\n\t"               /* ss */
        "pushq %%rcx\n\t"             /* rsp: the same stack */
        "pushfq\n\t"                  /* rflags: unchanged (interrupts stay off) */
        "pushq %q1\n\t"               /* cs */
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "iretq\n"
        "1:"
        :
        : "r"((uint64_t)SEL_USER_DATA), "r"((uint64_t)SEL_USER_CODE)
        : "rax", "rcx", "memory", "cc");
    in_user = 1;
    cpu_set_fs_base(0);   /* iretq may have nulled FS; TLS use before set-up must still fault */
}

/* The gates only matter once an exception happens, so the runtime fills them after the drop to
 * CPL3 where it can: at CPL3 the ~300 stores run natively, at CPL0 kvm_pvm emulates each one
 * (~0.3-0.5 ms of every start). Nothing between lidt and this can fault but a runtime bug. */
void cpu_init_idt(void)
{
    for (int v = 0; v < NVECTORS; v++) {
        uint64_t h = (uint64_t)(uintptr_t)(ukvm_trap_stubs + 16 * v);
        idt[v].offset_lo = (uint16_t)h;
        idt[v].selector = SEL_CODE;
        idt[v].ist = (v == 2 || v == 8) ? 2 : 1;
        idt[v].type_attr = 0x8e;  /* present, DPL 0, 64-bit interrupt gate */
        idt[v].offset_mid = (uint16_t)(h >> 16);
        idt[v].offset_hi = (uint32_t)(h >> 32);
    }
}

void cpu_init(const struct hvt_boot_info *bi)
{
    boot_info = bi;
    uint64_t tb = (uint64_t)(uintptr_t)&tss;
    tss.ist[0] = (uint64_t)(uintptr_t)(trap_stack + TRAP_STACK_SIZE);
    tss.ist[1] = (uint64_t)(uintptr_t)(fault_stack + TRAP_STACK_SIZE);
    tss.rsp[0] = tss.ist[0];
    tss.iomap_base = (uint16_t)__builtin_offsetof(struct tss, iomap);
    tss.iomap_end = 0xff;
    gdt[3] = (sizeof tss - 1) | ((tb & 0xffffff) << 16) | (0x89ULL << 40) | (((tb >> 24) & 0xff) << 56);
    gdt[4] = tb >> 32;

    struct dtr gdtr = { sizeof gdt - 1, (uint64_t)(uintptr_t)gdt };
    struct dtr idtr = { sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    __asm__ __volatile__(
        "lgdt %0\n\t"
        "pushq %2\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "lretq\n"
        "1:\n\t"
        "movl %3, %%eax\n\t"
        "movl %%eax, %%ss\n\t"
        "movl %%eax, %%ds\n\t"
        "movl %%eax, %%es\n\t"
        "ltr %w4\n\t"
        "lidt %1"
        :
        : "m"(gdtr), "m"(idtr), "i"(SEL_CODE), "i"(SEL_DATA), "r"(SEL_TSS)
        : "rax", "memory");
}

static const char *const trap_names[] = {
    "#DE", "#DB", "#NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#9", "#TS", "#NP",
    "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#21", "#22", "#23",
    "#24", "#25", "#26", "#27", "#28", "#29", "#30", "#31",
};

/* A debugger's stop from CPL3 (a single step, a debug register, its int3): report the saved
 * registers' address to the tender, which serves the debugger and may change them. The flag is
 * read from boot info each time, so that the tender can set it on a VM restored from a snapshot. */
static int debugger_stop(struct trap_regs *r)
{
    if (!boot_info || !(boot_info->host_features & UKVM_FEATURE_DEBUG) || (r->cs & 3) != 3)
        return 0;
    if (r->vector != 1 && r->vector != 3 && !(r->vector == 13 && r->ec == GP_EC_IDT_BP))
        return 0;
    __asm__ __volatile__("outl %%eax, %%dx" : : "a"((uint32_t)(uintptr_t)r), "d"((uint16_t)UKVM_DEBUG_PORT)
                         : "memory");
    return 1;
}

void ukvm_trap(struct trap_regs *r);
void ukvm_trap(struct trap_regs *r)
{
    if (debugger_stop(r))
        return;
    uint64_t vec = r->vector;
    int has_ec = vec == 8 || (vec >= 10 && vec <= 14) || vec == 17;
    static struct trap_frame f;     /* fatal: one at most */
    uint64_t cr2 = 0;
    if (has_ec)
        __asm__ __volatile__("movq %%cr2, %0" : "=r"(cr2));
    f = (struct trap_frame){ cr2, r->ec, r->rip, r->cs, r->rflags, r->rsp, r->ss };
    log_printf(LOG_INFO, "Solo5: trap: type=%s ec=0x%lx rip=0x%lx rsp=0x%lx rflags=0x%lx\n",
               trap_names[vec & 31], f.ec, f.rip, f.rsp, f.rflags);
    if (vec == 14)
        log_printf(LOG_INFO, "Solo5: trap: cr2=0x%lx\n", f.cr2);
    PANIC("Fatal trap", &f);
}
