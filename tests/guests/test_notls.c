/* test_notls: TLS before solo5_set_tls_base() hits the unmapped zero page (FS base 0). */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("notls");
    uint64_t v;
    __asm__ __volatile__("movq %%fs:0x28, %0" : "=r"(v));
    puts("FAILURE\n");
    return (int)v;
}
