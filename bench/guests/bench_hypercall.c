/* bench_hypercall: N WALLTIME hypercalls, then the same loop without the exit; ns per iteration. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t n = next_u64(&p);
    solo5_time_t t0 = solo5_clock_monotonic();
    for (uint64_t i = 0; i < n; i++)
        (void)solo5_clock_wall();
    solo5_time_t t1 = solo5_clock_monotonic();
    for (uint64_t i = 0; i < n; i++)
        __asm__ __volatile__("" ::: "memory");
    solo5_time_t t2 = solo5_clock_monotonic();
    puts("hypercall_ns ");
    put_u64((t1 - t0) / n);
    puts("\nloop_ns ");
    put_u64((t2 - t1) / n);
    puts("\n");
    return 0;
}
