/* memcmp.c: fallback for applications that bring no C library (linked only if undefined). */
#include <stddef.h>

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}
