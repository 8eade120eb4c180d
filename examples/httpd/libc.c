/* libc.c: the two C library functions lwIP calls that the ukvm runtime's fallbacks
 * (src/ukvm/runtime/libc: memcpy, memmove, memset, memcmp, strlen) do not provide. With Solo5's
 * toolchain, which has no C library, build.py adds those fallbacks' sources too. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++)
        if (*a != *b || !*a)
            return (unsigned char)*a - (unsigned char)*b;
    return 0;
}

int atoi(const char *s)
{
    int v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v;
}
