/* test_exit: the command line (a decimal number) becomes the exit status. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    int v = 0, neg = 0;
    const char *p = si->cmdline;
    if (*p == '-')
        neg = 1, p++;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    solo5_exit(neg ? -v : v);
}
