/* test_xnow: .text is not writable; the write is a host/guest translation fault. */
#include "testlib.h"

void nothing(void);
void __attribute__((noinline)) nothing(void)
{
    __asm__ __volatile__("");
}

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("xnow");
    *(volatile uint64_t *)(uintptr_t)&nothing = 0xc3c3c3c3c3c3c3c3ULL;
    nothing();
    puts("FAILURE\n");
    return SOLO5_EXIT_FAILURE;
}
