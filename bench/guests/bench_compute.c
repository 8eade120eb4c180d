/* bench_compute: a checksum over MB MiB of memory (no exits): pure guest computation. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t mb = next_u64(&p);
    uint64_t words = (mb << 20) / 8;
    if ((mb << 20) + (1 << 20) > si->heap_size)
        return 2;
    volatile uint64_t *mem = (volatile uint64_t *)si->heap_start;
    solo5_time_t t0 = solo5_clock_monotonic();
    uint64_t sum = 0;
    for (uint64_t i = 0; i < words; i++)
        sum = (sum << 1 | sum >> 63) ^ (mem[i] + i);
    solo5_time_t t1 = solo5_clock_monotonic();
    puts("compute_ns ");
    put_u64(t1 - t0);
    puts("\nchecksum ");
    put_u64(sum);
    puts("\n");
    return 0;
}
