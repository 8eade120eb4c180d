/* test_globals: .data is loaded and writable. */
#include "testlib.h"

static char message[] = "RUCCESS\n";

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("globals");
    message[0]++;
    puts(message);
    return SOLO5_EXIT_SUCCESS;
}
