/* ssp.c: stack protector support (global guard, since TLS is off until the application sets it). */
#include "runtime.h"

uintptr_t __stack_chk_guard = 0x00deadbeef0d0a00ULL;

void ssp_init(void)
{
    uint64_t g = cpu_rdtsc();
    g += cpu_rdtsc() << 32;
    __stack_chk_guard = g & ~0xff00ULL;   /* a zero byte stops string overruns */
}

void __stack_chk_fail(void) __attribute__((noreturn));
void __stack_chk_fail(void)
{
    static const char msg[] = "Solo5: ABORT: Stack corruption detected\n";
    console_puts(msg, sizeof msg);   /* the NUL goes out too, as upstream's does */
    hvt_halt(SOLO5_EXIT_ABORT, 0);
}
