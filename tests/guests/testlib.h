/* testlib.h: small helpers for the test guests (they bring no C library). */
#ifndef TESTLIB_H
#define TESTLIB_H
#include "solo5.h"

static inline size_t t_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static inline int t_strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

static inline void puts(const char *s)
{
    solo5_console_write(s, t_strlen(s));
}

static inline void put_u64(uint64_t v)
{
    char buf[24];
    int i = sizeof buf;
    buf[--i] = '\0';
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

/* The next decimal number in *s (skipping spaces); *s moves past it. */
static inline uint64_t next_u64(const char **s)
{
    uint64_t v = 0;
    while (**s == ' ')
        (*s)++;
    while (**s >= '0' && **s <= '9')
        v = v * 10 + (uint64_t)(*(*s)++ - '0');
    return v;
}

static inline void header(const char *name)
{
    puts("\n**** Solo5 standalone test_");
    puts(name);
    puts(" ****\n\n");
}
#endif
