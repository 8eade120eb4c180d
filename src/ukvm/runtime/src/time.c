/* time.c: monotonic clock from the TSC, wall clock and yield through hypercalls. */
#include "runtime.h"

static uint64_t tsc_at_boot;
static uint64_t ns_at_boot;
static uint32_t tsc_mult;   /* ns = (ticks * tsc_mult) >> tsc_shift */
static unsigned tsc_shift;

static uint64_t ticks_to_ns(uint64_t ticks)
{
    return (uint64_t)(((unsigned __int128)ticks * tsc_mult) >> tsc_shift);
}

void time_init(uint64_t freq)
{
    if (freq == 0)
        PANIC("TSC frequency unknown", 0);
    /* Largest shift whose multiplier still fits 32 bits; 1e9 << 32 fits in 64 bits. */
    for (tsc_shift = 32;; tsc_shift--) {
        uint64_t m = (1000000000ULL << tsc_shift) / freq;
        if (m != 0 && m <= 0xffffffffULL) {
            tsc_mult = (uint32_t)m;
            break;
        }
        if (tsc_shift == 0)
            PANIC("TSC frequency out of range", 0);
    }
    tsc_at_boot = cpu_rdtsc();
    ns_at_boot = ticks_to_ns(tsc_at_boot);
    log_printf(LOG_DEBUG, "Solo5: tscclock_init(): tsc_freq=%lu tsc_mult=%u tsc_shift=%u\n",
               freq, tsc_mult, tsc_shift);
}

solo5_time_t solo5_clock_monotonic(void)
{
    /* Always relative to boot, so rounding never accumulates. */
    return ns_at_boot + ticks_to_ns(cpu_rdtsc() - tsc_at_boot);
}

solo5_time_t solo5_clock_wall(void)
{
    struct hvt_hc_walltime arg;
    hvt_hypercall(HVT_HYPERCALL_WALLTIME, &arg);
    return arg.nsecs;
}

void solo5_yield(solo5_time_t deadline, solo5_handle_set_t *ready_set)
{
    struct hvt_hc_poll arg;
    solo5_time_t now = solo5_clock_monotonic();
    arg.timeout_nsecs = deadline > now ? deadline - now : 0;
    hvt_hypercall(HVT_HYPERCALL_POLL, &arg);
    if (ready_set)
        *ready_set = arg.ready_set;
}
