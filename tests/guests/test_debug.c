/* test_debug: a guest to debug with gdb (tests/integration/test_gdb.py): a global that a
 * function changes, a loop calling it, an exit status from another global; "spin" loops forever
 * for Ctrl-C. */
#include "testlib.h"

volatile uint64_t counter;
uint64_t answer = 42;

static __attribute__((noinline)) uint64_t bump(uint64_t by)
{
    counter += by;
    return counter;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    if (!t_strcmp(si->cmdline, "spin")) {
        puts("spinning\n");
        for (;;)
            counter++;
    }
    uint64_t total = 0;
    for (int i = 0; i < 3; i++)
        total += bump(i + 1);
    puts("total ");
    put_u64(total);
    puts("\n");
    return (int)(answer - 39);
}
