/*
 * test_hostile: misbehaves on purpose; the command line picks the attack. The tender must end
 * it with the documented message and status, never crash or hang.
 */
#include "testlib.h"
#include "../../src/ukvm/runtime/src/hvt.h"

static void out32(uint16_t port, uint32_t value)
{
    __asm__ __volatile__("outl %0, %1" : : "a"(value), "d"(port) : "memory");
}

static void __attribute__((noinline)) in_text(void)
{
    __asm__ __volatile__("");
}

static const struct hvt_hc_walltime in_rodata;

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *a = si->cmdline;
    static struct hvt_hc_puts puts_arg;

    if (!t_strcmp(a, "port")) {
        out32(0x400, 0);
    } else if (!t_strcmp(a, "portin")) {
        uint32_t v;
        __asm__ __volatile__("inl %1, %0" : "=a"(v) : "d"((uint16_t)0x501));
    } else if (!t_strcmp(a, "port16")) {
        __asm__ __volatile__("outw %0, %1" : : "a"((uint16_t)0), "d"((uint16_t)0x501));
    } else if (!t_strcmp(a, "hypercall")) {
        static struct hvt_hc_block_io arg;
        hvt_hypercall(HVT_HYPERCALL_BLOCK_WRITE, &arg);   /* no block device attached */
    } else if (!t_strcmp(a, "reserved")) {
        out32(0x500, 0);
    } else if (!t_strcmp(a, "argptr")) {
        out32(0x500 + HVT_HYPERCALL_PUTS, 0xfffffff0u);
    } else if (!t_strcmp(a, "dataptr")) {
        puts_arg.data = 0xfffffffff000ULL;
        puts_arg.len = 16;
        hvt_hypercall(HVT_HYPERCALL_PUTS, &puts_arg);
    } else if (!t_strcmp(a, "overflow")) {
        puts_arg.data = 0x200000;
        puts_arg.len = 0xffffffffffffffffULL;   /* data + len wraps past 2^64 */
        hvt_hypercall(HVT_HYPERCALL_PUTS, &puts_arg);
    } else if (!t_strcmp(a, "rodata")) {
        hvt_hypercall(HVT_HYPERCALL_WALLTIME, (void *)&in_rodata);
    } else if (!t_strcmp(a, "text")) {
        hvt_hypercall(HVT_HYPERCALL_WALLTIME, (void *)(uintptr_t)&in_text);
    } else if (!t_strcmp(a, "cookie")) {
        struct hvt_hc_halt h = { .cookie = 0xfffffffffffff000ULL, .exit_status = 0 };
        hvt_hypercall(HVT_HYPERCALL_HALT, &h);
    } else if (!t_strcmp(a, "bootinfo")) {
        *(volatile uint64_t *)(uintptr_t)0x10000 = 0;     /* read-only in the guest page tables */
    } else if (!t_strcmp(a, "pagetable")) {
        *(volatile uint64_t *)(uintptr_t)0x2000 = 0;      /* not mapped at all */
    } else if (!t_strcmp(a, "triple")) {
        struct { uint16_t limit; uint64_t base; } __attribute__((packed)) none = { 0, 0 };
        __asm__ __volatile__("lidt %0\n\tint3" : : "m"(none));
    } else if (!t_strcmp(a, "hlt")) {
        __asm__ __volatile__("hlt");
    } else if (!t_strcmp(a, "loop")) {
        puts("looping\n");
        for (;;)
            __asm__ __volatile__("" ::: "memory");
    } else if (!t_strcmp(a, "sleep")) {
        puts("sleeping\n");
        solo5_yield(solo5_clock_monotonic() + 3600ULL * 1000000000ULL, 0);
    } else if (!t_strcmp(a, "flood")) {
        for (int i = 0; i < 2000; i++)
            puts("flood flood flood flood flood flood flood flood flood flood flood flood\n");
        return 7;
    } else {
        puts("unknown attack\n");
        return 2;
    }
    puts("FAILURE: survived\n");
    return 3;
}
