/* test_quiet: with --solo5:quiet nothing but the application's own output appears. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("verbose");
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
