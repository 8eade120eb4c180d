/* test_profile: spends twice as long in spin_long() as in spin_short(), in alternating slices,
 * each called through a shared helper so that a stack walk has frames to find. The total time is
 * the first argument in milliseconds (default 900). Built with frame pointers by the tests. */
#include "testlib.h"

static volatile uint64_t sink;

__attribute__((noinline)) static void spin_until(uint64_t deadline)
{
    while (solo5_clock_monotonic() < deadline)
        for (int i = 0; i < 200; i++)
            sink = sink * 6364136223846793005ULL + 1442695040888963407ULL;
}

__attribute__((noinline)) void spin_long(uint64_t ns)
{
    spin_until(solo5_clock_monotonic() + ns);
    sink++;            /* not a tail call: this frame stays on the stack */
}

__attribute__((noinline)) void spin_short(uint64_t ns)
{
    spin_until(solo5_clock_monotonic() + ns);
    sink++;            /* not a tail call: this frame stays on the stack */
}

int solo5_app_main(const struct solo5_start_info *si)
{
    uint64_t total_ms = 900;
    if (si->cmdline[0]) {
        total_ms = 0;
        for (const char *p = si->cmdline; *p >= '0' && *p <= '9'; p++)
            total_ms = total_ms * 10 + (uint64_t)(*p - '0');
    }
    const uint64_t slice = 30000000;       /* 30 ms: 20 ms long, 10 ms short */
    for (uint64_t done = 0; done < total_ms * 1000000; done += slice) {
        spin_long(slice * 2 / 3);
        spin_short(slice / 3);
    }
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
