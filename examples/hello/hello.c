/* hello.c: the smallest ukvm unikernel: greet, show the command line, exit 0. */
#include "solo5.h"

static size_t length(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void puts(const char *s)
{
    solo5_console_write(s, length(s));
}

int solo5_app_main(const struct solo5_start_info *si)
{
    puts("\n**** ukvm hello ****\n\n");
    puts("Hello, World\n");
    puts("Command line is: '");
    puts(si->cmdline);
    puts("'\n");
    return SOLO5_EXIT_SUCCESS;
}
