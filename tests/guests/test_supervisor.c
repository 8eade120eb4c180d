/* test_supervisor: privileged and hostile things a guest built by Solo5's toolchain may do, for
 * the CPL3 supervisor (tests/integration/test_upstream.py). The command line picks one. Under
 * solo5-hvt each runs at CPL0 on real (or kvm_pvm-emulated) hardware; under ukvm's supervisor the
 * guest must see the same thing, and whatever would hurt the supervisor must end the run cleanly. */
#include "testlib.h"

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint64_t base;
};

static uint64_t own_idt[2 * 32] __attribute__((aligned(16)));

static void set_gate(int vec, void (*handler)(void), int ist)
{
    uint64_t h = (uint64_t)(uintptr_t)handler;
    own_idt[2 * vec] = (h & 0xffff) | (0x08ULL << 16) | ((uint64_t)ist << 32) | (0x8eULL << 40) |
                       (((h >> 16) & 0xffff) << 48);
    own_idt[2 * vec + 1] = h >> 32;
}

static void load_own_idt(void)
{
    struct dtr d = { sizeof own_idt - 1, (uint64_t)(uintptr_t)own_idt };
    __asm__ __volatile__("lidt %0" : : "m"(d));
}

extern void ud_handler(void);
__asm__(".text\n"
        "ud_handler:\n\t"
        "addq $2, (%rsp)\n\t"      /* step over the ud2 */
        "iretq\n");

static int cpl(void)
{
    uint16_t cs;
    __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}

/* "fuzz CASE A B C D": one privileged or odd instruction with the guest's registers (and, for
 * the returns, its stack) holding A-D; the test feeds random values and checks the run ends
 * cleanly whatever the supervisor makes of it. */
#define R(insn) __asm__ __volatile__(insn : : "a"(a), "c"(b), "d"(c), "b"(d), "S"(a ^ b), "D"(c ^ d) : "memory")
static void fuzz_case(uint64_t n, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    switch (n) {
    case 0: R("wrmsr"); break;
    case 1: R("rdmsr"); break;
    case 2: R("lgdt (%%rbx)"); break;
    case 3: R("lidt (%%rbx)"); break;
    case 4: R("ltr %%ax"); break;
    case 5: R("lldt %%ax"); break;
    case 6: R("mov %%eax, %%ss"); break;
    case 7: R("mov %%eax, %%ds"); break;
    case 8: R("mov %%eax, %%fs"); break;
    case 9: R("mov %%eax, %%gs"); break;
    case 10: R("mov %%rax, %%cr0"); break;
    case 11: R("mov %%rax, %%cr3"); break;
    case 12: R("mov %%rax, %%cr4"); break;
    case 13: R("mov %%rax, %%cr2"); break;
    case 14: R("mov %%cr8, %%rax"); break;
    case 15: R("mov %%rax, %%dr7"); break;
    case 16: R("invlpg (%%rbx)"); break;
    case 17: R("wbinvd"); break;
    case 18: R("cli; sti"); break;
    case 19: R("in (%%dx), %%al"); break;
    case 20: R("out %%al, (%%dx)"); break;
    case 21: R("outsb"); break;
    case 22: R("int $0x80"); break;
    case 23: R("pushq %%rax; pushq %%rcx; pushq %%rdx; pushq %%rbx; pushq %%rsi; iretq"); break;
    case 24: R("pushq %%rax; pushq %%rcx; lretq"); break;
    case 25: R("pushq %%rax; pushq %%rcx; lret"); break;
    case 26: R("pushq %%rax; pushq %%rcx; pushq %%rdx; pushq %%rbx; pushq %%rsi; iret"); break;
    case 27: R("swapgs"); break;
    case 28: R("lgdt %%fs:(%%rbx)"); break;
    case 29: R("mov (%%rbx), %%ss"); break;
    case 30: R("ltr (%%rbx)"); break;
    case 31: R("lidt 8(%%rbx,%%rsi,4)"); break;
    case 32: R("xsetbv"); break;
    case 33: R("rdpmc"); break;
    case 34: R("clts"); break;
    case 35: __asm__ __volatile__("mov %%cr3, %%r15" : : : "r15", "memory"); break;
    case 36: R("pushq %%rax; pushq %%rcx; lret $8"); break;
    case 37: R("sysret"); break;
    case 38: R("int $3; int $0x40"); break;
    case 39: R("lidt (%%rbx); ud2"); break;
    default: break;
    }
}

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *cmd = si->cmdline;
    if (cmd[0] == 'f' && cmd[1] == 'u') {              /* fuzz CASE A B C D */
        const char *p = cmd + 4;
        uint64_t n = next_u64(&p), a = next_u64(&p), b = next_u64(&p), c = next_u64(&p), d = next_u64(&p);
        fuzz_case(n, a, b, c, d);
        puts("survived\n");
        return SOLO5_EXIT_SUCCESS;
    }
    puts(cpl() == 3 ? "CPL 3\n" : "CPL 0\n");
    if (!t_strcmp(cmd, "idt-into-supervisor")) {
        /* An IDT over the supervisor's pages: delivering any exception must fail cleanly. */
        struct dtr d = { 0xfff, 0x9000 };
        __asm__ __volatile__("lidt %0; ud2" : : "m"(d));
    } else if (!t_strcmp(cmd, "stack-into-supervisor")) {
        /* A handler without IST and a stack inside the supervisor's pages. */
        set_gate(6, ud_handler, 0);
        load_own_idt();
        __asm__ __volatile__("movq %%rsp, %%rbx; movq $0xe800, %%rsp; ud2; movq %%rbx, %%rsp"
                             : : : "rbx", "memory");
    } else if (!t_strcmp(cmd, "own-handler")) {
        /* The guest's own handler gets the #UD and returns with iretq to the next instruction. */
        set_gate(6, ud_handler, 0);
        load_own_idt();
        __asm__ __volatile__("ud2");
        puts("returned from own #UD handler\n");
    } else if (!t_strcmp(cmd, "report-port")) {
        __asm__ __volatile__("outl %%eax, %%dx" : : "a"(0), "d"(0x5fe));
    } else if (!t_strcmp(cmd, "cr3")) {
        __asm__ __volatile__("movq %0, %%cr3" : : "r"(0x1234000ULL));
    } else if (!t_strcmp(cmd, "cr-read")) {
        uint64_t cr0, cr3, cr4;
        __asm__ __volatile__("movq %%cr0, %0; movq %%cr3, %1; movq %%cr4, %2" : "=r"(cr0), "=r"(cr3), "=r"(cr4));
        puts("cr0 "); put_u64(cr0); puts(" cr3 "); put_u64(cr3); puts(" cr4 "); put_u64(cr4); puts("\n");
    } else if (!t_strcmp(cmd, "hlt")) {
        __asm__ __volatile__("hlt");
    } else if (!t_strcmp(cmd, "noncanonical-fs")) {
        solo5_set_tls_base(0x8000000000000000ULL);
    } else if (!t_strcmp(cmd, "read-low")) {
        puts("read ");
        put_u64(*(volatile uint64_t *)0x9000);
    } else if (!t_strcmp(cmd, "ud2")) {
        __asm__ __volatile__("ud2");
    } else if (!t_strcmp(cmd, "div0")) {
        volatile uint64_t zero = 0;
        puts("quotient ");
        put_u64(100 / zero);
    } else if (!t_strcmp(cmd, "gp")) {
        __asm__ __volatile__("movq (%0), %%rax" : : "r"(0x8000000000000000ULL) : "rax");  /* non-canonical */
    } else if (!t_strcmp(cmd, "int3")) {
        __asm__ __volatile__("int3");
    } else if (!t_strcmp(cmd, "lgdt-unmapped")) {
        __asm__ __volatile__("lgdt (%0)" : : "r"(0x500000000ULL));
    } else if (!t_strcmp(cmd, "sti-cli")) {
        uint64_t flags;
        __asm__ __volatile__("sti; cli; pushfq; popq %0" : "=r"(flags));
        /* IF is masked: at CPL3 pushfq shows the real IF, which kvm_pvm keeps set (docs/cpl3.md). */
        puts("flags "); put_u64(flags & ~0x210ULL); puts("\n");
    } else {
        puts("unknown command\n");
        return 2;
    }
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
