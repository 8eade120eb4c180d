/* test_snapshot: state before the first yield is the snapshot's; what follows must not leak
 * from one clone run into the next. Exits with the number of runs this memory has seen (1 in
 * every fresh clone), after touching pages the reset has to drop. */
#include "testlib.h"

static int runs;
static uint8_t scratch[64 * 4096];

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    puts("booted\n");
    solo5_time_t t0 = solo5_clock_monotonic();
    solo5_yield(t0 + 1000000, 0);            /* "ready": a snapshot is taken here */
    runs++;
    for (unsigned i = 0; i < sizeof scratch; i += 4096)
        scratch[i] += 1;
    puts("resumed: runs=");
    put_u64((uint64_t)runs);
    puts(" scratch=");
    put_u64(scratch[4096 * 7]);
    puts(" clock_ok=");
    put_u64(solo5_clock_monotonic() >= t0);
    puts(" wall_s=");
    put_u64(solo5_clock_wall() / 1000000000ULL);
    puts("\n");
    return runs;
}
