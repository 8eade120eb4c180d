/* bench_spin: N million rounds of integer arithmetic in registers (no memory traffic, no exits);
 * prints spin_ns, the guest's own measure of how long that took. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t rounds = next_u64(&p) * 1000000;
    uint64_t x = 1;
    solo5_time_t t0 = solo5_clock_monotonic();
    for (uint64_t i = 0; i < rounds; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        __asm__ __volatile__("" : "+r"(x));
    }
    solo5_time_t t1 = solo5_clock_monotonic();
    puts("spin_ns ");
    put_u64(t1 - t0);
    puts("\nresult ");
    put_u64(x);
    puts("\n");
    return 0;
}
