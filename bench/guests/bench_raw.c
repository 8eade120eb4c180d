/* bench_raw: hypercalls issued directly (one `out` each, no solo5.h layer in between), so that a
 * figure is one exit per operation on any hvt tender:
 *   block write|read BS MB   BLOCK_WRITE/BLOCK_READ of BS bytes at a time, MB MiB in all
 *   netwrite N LEN           N NET_WRITE hypercalls of a LEN-byte frame (broadcast, ignored)
 * Prints `<what>_ns <total ns>`. Argument layouts: docs/hvt-abi.md section 8. */
#include "solo5.h"
#include "../../tests/guests/testlib.h"

struct block_io { uint64_t handle, offset, data, len; int32_t ret; uint32_t pad; };
struct net_io { uint64_t handle, data, len; int32_t ret; uint32_t pad; };

static uint8_t buf[8 << 20] __attribute__((aligned(4096)));

static inline void hypercall(int nr, volatile void *arg)
{
    __asm__ __volatile__("outl %0, %1" : : "a"((uint32_t)(uintptr_t)arg), "d"((uint16_t)(0x500 + nr)) : "memory");
}

static void report(const char *what, solo5_time_t ns)
{
    puts(what);
    puts("_ns ");
    put_u64(ns);
    puts("\n");
}

int solo5_app_main(const struct solo5_start_info *si)
{
    const char *p = si->cmdline;
    while (*p == ' ')
        p++;
    if (p[0] == 'b') {                          /* block write|read BS MB */
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
        int write = p[0] == 'w';
        while (*p && *p != ' ')
            p++;
        uint64_t bs = next_u64(&p), total = next_u64(&p) << 20;
        solo5_handle_t h;
        struct solo5_block_info bi;
        if (solo5_block_acquire("storage", &h, &bi) != SOLO5_R_OK || bs > sizeof buf || bi.capacity % bs)
            return 2;
        volatile struct block_io io = { .handle = h, .data = (uintptr_t)buf, .len = bs };
        solo5_time_t t0 = solo5_clock_monotonic();
        for (uint64_t done = 0; done < total; done += bs) {
            io.offset = done % bi.capacity;
            hypercall(write ? 4 : 5, &io);
            if (io.ret != SOLO5_R_OK)
                return 3;
        }
        report(write ? "block_write" : "block_read", solo5_clock_monotonic() - t0);
    } else if (p[0] == 'n') {                   /* netwrite N LEN */
        while (*p && *p != ' ')
            p++;
        uint64_t n = next_u64(&p), len = next_u64(&p);
        solo5_handle_t h;
        struct solo5_net_info ni;
        if (solo5_net_acquire("service0", &h, &ni) != SOLO5_R_OK || len < 14 || len > sizeof buf)
            return 2;
        for (int i = 0; i < 6; i++)
            buf[i] = 0xff;                      /* broadcast to nobody in particular */
        for (int i = 0; i < 6; i++)
            buf[6 + i] = ni.mac_address[i];
        buf[12] = 0x88;                         /* a local experimental EtherType */
        buf[13] = 0xb5;
        volatile struct net_io io = { .handle = h, .data = (uintptr_t)buf, .len = len };
        solo5_time_t t0 = solo5_clock_monotonic();
        for (uint64_t i = 0; i < n; i++) {
            io.len = len;
            hypercall(6, &io);
            if (io.ret != SOLO5_R_OK)
                return 3;
        }
        report("netwrite", solo5_clock_monotonic() - t0);
    } else {
        return 1;
    }
    return 0;
}
