/* test_tls: two TLS blocks, switched with solo5_set_tls_base(); .tdata and .tbss both work. */
#include "testlib.h"

static __thread int counter;                  /* .tbss */
static __thread int magic = 0xC0FFEE;         /* .tdata */
static uint8_t arena[65536] __attribute__((aligned(64)));
static size_t used;

static uintptr_t tls_alloc(void)
{
    size_t size = (solo5_tls_size() + 63) & ~(size_t)63;
    if (used + size > sizeof arena)
        return 0;
    uintptr_t p = (uintptr_t)&arena[used];
    used += size;
    return p;
}

static int __attribute__((noinline)) get_counter(void) { return counter; }
static void __attribute__((noinline)) set_counter(int v) { counter = v; }
static int __attribute__((noinline)) get_magic(void) { return magic; }

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("tls");
    uintptr_t a = tls_alloc(), b = tls_alloc();
    if (solo5_tls_init(a) != SOLO5_R_OK)
        return 10;
    if (solo5_tls_init(b) != SOLO5_R_OK)
        return 11;
    if (solo5_tls_init(0) != SOLO5_R_EINVAL)
        return 12;
    solo5_set_tls_base(solo5_tls_tp_offset(a));
    set_counter(1);
    if (get_magic() != 0xC0FFEE)
        return 1;
    solo5_set_tls_base(solo5_tls_tp_offset(b));
    if (get_counter() != 0)
        return 2;
    set_counter(2);
    if (get_magic() != 0xC0FFEE)
        return 3;
    solo5_set_tls_base(solo5_tls_tp_offset(a));
    if (get_counter() != 1)
        return 4;
    solo5_set_tls_base(solo5_tls_tp_offset(b));
    if (get_counter() != 2)
        return 5;
    /* The thread pointer word points to itself (x86_64 TLS variant II). */
    uintptr_t tp;
    __asm__ __volatile__("movq %%fs:0, %0" : "=r"(tp));
    if (tp != solo5_tls_tp_offset(b))
        return 6;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
