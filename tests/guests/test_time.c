/* test_time: the monotonic clock advances, yield sleeps 1 s +- 0.2 s, the wall clock is sane. */
#include "testlib.h"

#define NSEC_PER_SEC 1000000000ULL

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("time");
    solo5_time_t t0 = solo5_clock_monotonic(), t1 = t0;
    for (int i = 0; i < 5 && t1 == t0; i++)
        t1 = solo5_clock_monotonic();
    if (t1 == t0) {
        puts("ERROR: time is not passing\n");
        return SOLO5_EXIT_FAILURE;
    }
    t0 = solo5_clock_monotonic();
    solo5_yield(t0, 0);
    puts("Overhead of solo5_yield(): ");
    put_u64(solo5_clock_monotonic() - t0);
    puts(" ns\n");

    int failed = 0;
    for (int i = 0; i < 5; i++) {
        t0 = solo5_clock_monotonic();
        solo5_yield(t0 + NSEC_PER_SEC, 0);
        uint64_t slept = solo5_clock_monotonic() - t0;
        puts("Slept for ");
        put_u64(slept);
        puts(" ns\n");
        if (slept < NSEC_PER_SEC - NSEC_PER_SEC / 5) {
            puts("ERROR: slept too little\n");
            failed = 1;
        } else if (slept > NSEC_PER_SEC + NSEC_PER_SEC / 5) {
            puts("ERROR: slept too much\n");
            failed = 1;
        }
    }
    if (solo5_clock_wall() < 1483228800ULL * NSEC_PER_SEC) {
        puts("ERROR: wall clock before 2017\n");
        failed = 1;
    }
    if (failed)
        return SOLO5_EXIT_FAILURE;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
