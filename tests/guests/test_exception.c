/* test_exception: a write to never-mapped memory (16 GiB) traps and aborts. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("exception");
    *(volatile int *)0x400000000ULL = 1;
    puts("FAILURE\n");
    return SOLO5_EXIT_FAILURE;
}
