/* string.c: the few string helpers the runtime itself needs (kept local to the runtime). */
#include "runtime.h"

void *rt_memcpy(void *dst, const void *src, size_t n)
{
    /* String instructions: where CPL0 code is emulated (kvm_pvm) each iteration costs about as
     * much as one instruction, so copy 8 bytes per iteration and the rest bytewise. */
    void *d = dst;
    size_t words = n / 8, bytes = n % 8;
    __asm__ __volatile__("rep movsq\n\t"
                         "movq %3, %%rcx\n\t"
                         "rep movsb"
                         : "+D"(d), "+S"(src), "+c"(words)
                         : "r"(bytes)
                         : "memory");
    return dst;
}

int rt_strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (*a == '\0')
            return 0;
    }
    return 0;
}

size_t rt_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
