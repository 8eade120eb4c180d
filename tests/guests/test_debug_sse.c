/* test_debug_sse: a guest to debug at CPL3 with SSE in use (tests/integration/test_gdb_cpl3.py):
 * a double-precision function, a global it writes, a loop calling it. Built without
 * -mgeneral-regs-only, so the compiler keeps doubles in xmm registers. It yields once first, so
 * that a snapshot taken when it is ready (--snapshot-at=ready) can be debugged too. */
#include "testlib.h"

volatile uint64_t counter;
double last_area;

__attribute__((noinline)) double circle_area(double r)
{
    double area = 3.25 * r * r;      /* 3.25: exact in binary, so gdb prints it whole */
    last_area = area;
    return area;
}

__attribute__((noinline)) static void bump(uint64_t by)
{
    counter += by;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    solo5_yield(solo5_clock_monotonic(), 0);   /* "ready": where --snapshot-at=ready stops */
    double total = 0;
    for (int i = 1; i <= 3; i++) {
        total += circle_area((double)i);
        bump((uint64_t)i);
    }
    puts(total == 3.25 * 14 ? "SUCCESS\n" : "FAILURE\n");
    return (int)counter;            /* 6 */
}
