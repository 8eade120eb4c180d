/* string.h: the few C library functions lwIP calls; the ukvm runtime's fallbacks (or the
 * example's own libc.c under Solo5's toolchain) provide them. */
#ifndef UKVM_EXAMPLE_STRING_H
#define UKVM_EXAMPLE_STRING_H
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
int strncmp(const char *a, const char *b, size_t n);
size_t strlen(const char *s);
#endif
