/* test_ssp: overflowing a stack buffer is caught by the stack protector. */
#include "testlib.h"

static void __attribute__((noinline)) copy(char *dst, const char *src)
{
    while ((*dst++ = *src++))
        ;
}

static void __attribute__((noinline)) smash(const char *s)
{
    char buf[16];
    copy(buf, s);
    puts(buf);
}

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("ssp");
    smash("0123456789012345678901234567890123456789\n");
    puts("FAILURE\n");
    return SOLO5_EXIT_FAILURE;
}
