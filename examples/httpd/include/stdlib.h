/* stdlib.h: lwIP's netif.c calls atoi (libc.c). */
#ifndef UKVM_EXAMPLE_STDLIB_H
#define UKVM_EXAMPLE_STDLIB_H
int atoi(const char *s);
#endif
