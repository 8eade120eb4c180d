/* bench_block: sequential writes then reads of BS-byte requests, MB MiB in all, wrapping around
 * the device `storage` as often as needed. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

static uint8_t buf[8 << 20] __attribute__((aligned(4096)));

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t bs = next_u64(&p), total = next_u64(&p) << 20;
    solo5_handle_t h;
    struct solo5_block_info bi;
    if (solo5_block_acquire("storage", &h, &bi) != SOLO5_R_OK || bs > sizeof buf || bi.capacity % bs)
        return 2;
    solo5_time_t t0 = solo5_clock_monotonic();
    for (uint64_t done = 0; done < total; done += bs)
        if (solo5_block_write(h, done % bi.capacity, buf, bs) != SOLO5_R_OK)
            return 3;
    solo5_time_t t1 = solo5_clock_monotonic();
    for (uint64_t done = 0; done < total; done += bs)
        if (solo5_block_read(h, done % bi.capacity, buf, bs) != SOLO5_R_OK)
            return 4;
    solo5_time_t t2 = solo5_clock_monotonic();
    puts("write_ns ");
    put_u64(t1 - t0);
    puts("\nread_ns ");
    put_u64(t2 - t1);
    puts("\n");
    return 0;
}
