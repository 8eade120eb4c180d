/* bench_net_tx: sends N frames of SIZE bytes on service0 as fast as it can; ns for all. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

static uint8_t frame[1514];

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    uint64_t n = next_u64(&p), size = next_u64(&p);
    solo5_handle_t h;
    struct solo5_net_info ni;
    if (solo5_net_acquire("service0", &h, &ni) != SOLO5_R_OK || size > sizeof frame || size < 14)
        return 2;
    for (int i = 0; i < 6; i++) {
        frame[i] = 0xff;              /* broadcast, so the host stack accepts and counts it */
        frame[6 + i] = ni.mac_address[i];
    }
    frame[12] = 0x88;                 /* local experimental ethertype: ignored by the host */
    frame[13] = 0xb5;
    solo5_time_t t0 = solo5_clock_monotonic();
    for (uint64_t i = 0; i < n; i++)
        if (solo5_net_write(h, frame, size) != SOLO5_R_OK)
            return 3;
    solo5_time_t t1 = solo5_clock_monotonic();
    puts("tx_ns ");
    put_u64(t1 - t0);
    puts("\n");
    return 0;
}
