/* test_zeropage: the zero page is not mapped; writing to it traps and aborts. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("zeropage");
    *(volatile int *)(uintptr_t)8 = 1;
    puts("FAILURE\n");
    return SOLO5_EXIT_FAILURE;
}
