/* test_hello: boot, console, command line (SUCCESS only for "Hello_Solo5"). */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    header("hello");
    puts("Hello, World\nCommand line is: '");
    puts(si->cmdline);
    puts("'\n");
    if (t_strcmp(si->cmdline, "Hello_Solo5") == 0)
        puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
