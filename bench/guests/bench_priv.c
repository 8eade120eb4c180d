/* bench_priv: N solo5_set_tls_base() calls (a wrmsr in Solo5's bindings, which the CPL3
 * supervisor emulates), then the same loop without the call; ns per iteration. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t n = next_u64(&p);
    solo5_time_t t0 = solo5_clock_monotonic();
    for (uint64_t i = 0; i < n; i++)
        (void)solo5_set_tls_base(0);
    solo5_time_t t1 = solo5_clock_monotonic();
    puts("priv_ns ");
    put_u64((t1 - t0) / n);
    puts("\n");
    return 0;
}
