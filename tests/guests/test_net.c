/*
 * test_net: serves ARP, ICMP echo and UDP echo (port 7) on service0 at 10.0.0.2 and, when the
 * manifest declares it, on service1 at 10.1.0.2. Command-line tokens:
 *   limit[=N]  exit with SUCCESS after N echo requests in total (default 100000)
 *   verify     check that every echo payload after the timestamp repeats de ad be ef
 *   mtu        print "MTU is N" for service0 and exit with SUCCESS
 *   verbose    log every ARP and echo request
 * Per-packet work is kept small: guest code at CPL0 is emulated on kvm_pvm hosts.
 */
#include "testlib.h"

#define ETH_HLEN 14
#define NSEC_PER_SEC 1000000000ULL

struct iface {
    const char *name;
    solo5_handle_t handle;
    uint8_t mac[6];
    uint8_t ip[4];
    uint8_t bcast[4];
};

static struct iface ifs[2] = {
    { "service0", 0, { 0 }, { 10, 0, 0, 2 }, { 10, 0, 0, 255 } },
    { "service1", 0, { 0 }, { 10, 1, 0, 2 }, { 10, 1, 0, 255 } },
};
static int nifs;
static uint8_t buf[16384] __attribute__((aligned(8)));
static uint64_t requests, limit, corrupted;
static int verbose, verify;

static int eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    while (n--)
        if (*a++ != *b++)
            return 0;
    return 1;
}

static void cpy(uint8_t *d, const uint8_t *s, size_t n)
{
    while (n--)
        *d++ = *s++;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t ip_checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += be16(p + i);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static const char hex[] = "0123456789abcdef";

static void prefix(struct iface *f)
{
    puts("[");
    puts(f->name);
    puts("] ");
}

static void send(struct iface *f, size_t len)
{
    if (solo5_net_write(f->handle, buf, len) != SOLO5_R_OK) {
        puts("Write error\nFAILURE\n");
        solo5_exit(SOLO5_EXIT_FAILURE);
    }
}

static void announce(struct iface *f)
{
    static const uint8_t arp_hdr[8] = { 0, 1, 8, 0, 6, 4, 0, 1 };
    for (int i = 0; i < 6; i++)
        buf[i] = 0xff;
    cpy(buf + 6, f->mac, 6);
    put_be16(buf + 12, 0x0806);
    cpy(buf + 14, arp_hdr, 8);
    cpy(buf + 22, f->mac, 6);
    cpy(buf + 28, f->ip, 4);
    for (int i = 0; i < 6; i++)
        buf[32 + i] = 0;
    cpy(buf + 38, f->ip, 4);
    send(f, 42);
}

static void handle_arp(struct iface *f, size_t len)
{
    uint8_t *a = buf + ETH_HLEN;
    if (len < ETH_HLEN + 28 || be16(a + 6) != 1 || !eq(a + 24, f->ip, 4))
        return;
    if (verbose) {
        prefix(f);
        puts("ARP request\n");
    }
    put_be16(a + 6, 2);
    cpy(a + 18, a + 8, 10);        /* requester becomes target */
    cpy(a + 8, f->mac, 6);
    cpy(a + 14, f->ip, 4);
    cpy(buf, buf + 6, 6);
    cpy(buf + 6, f->mac, 6);
    send(f, ETH_HLEN + 28);
}

static void check_payload(const uint8_t *data, size_t n)
{
    static const uint8_t pattern[4] = { 0xde, 0xad, 0xbe, 0xef };
    for (size_t k = 16; k < n; k++)
        if (data[k] != pattern[k & 3]) {
            puts("CORRUPT: packet ");
            put_u64(requests);
            puts(" payload mismatch at byte ");
            put_u64(k);
            puts("\n");
            corrupted++;
            return;
        }
}

static void handle_ipv4(struct iface *f, size_t len)
{
    uint8_t *ip = buf + ETH_HLEN;
    static const uint8_t all_ones[4] = { 255, 255, 255, 255 };
    if (len < ETH_HLEN + 28 || ip[0] != 0x45)
        return;
    if (!eq(ip + 16, f->ip, 4) && !eq(ip + 16, f->bcast, 4) && !eq(ip + 16, all_ones, 4))
        return;
    size_t total = be16(ip + 2);
    if (total < 28 || ETH_HLEN + total > len)
        return;
    uint8_t *l4 = ip + 20;
    if (ip[9] == 1 && l4[0] == 8 && l4[1] == 0) {            /* ICMP echo request */
        requests++;
        if (verbose) {
            prefix(f);
            puts("Echo request\n");
        }
        if (verify)
            check_payload(l4 + 8, total - 28);
        l4[0] = 0;                                            /* echo reply */
        uint32_t sum = (uint16_t)~be16(l4 + 2) + 0xf7ffu;     /* RFC 1624: type 8 -> 0 */
        sum = (sum & 0xffff) + (sum >> 16);
        put_be16(l4 + 2, (uint16_t)~sum);
    } else if (ip[9] == 17 && be16(l4 + 2) == 7) {            /* UDP echo: swap ports */
        uint8_t port[2];
        cpy(port, l4, 2);
        cpy(l4, l4 + 2, 2);
        cpy(l4 + 2, port, 2);                                 /* checksum is unchanged */
    } else {
        return;
    }
    cpy(ip + 16, ip + 12, 4);
    cpy(ip + 12, f->ip, 4);
    put_be16(ip + 10, 0);
    put_be16(ip + 10, ip_checksum(ip, 20));
    cpy(buf, buf + 6, 6);
    cpy(buf + 6, f->mac, 6);
    send(f, ETH_HLEN + total);
}

static void handle_frame(struct iface *f, size_t len)
{
    if (len < ETH_HLEN || (!eq(buf, f->mac, 6) && !(buf[0] & 1)))
        return;                                               /* not for us */
    uint16_t type = be16(buf + 12);
    if (type == 0x0806)
        handle_arp(f, len);
    else if (type == 0x0800)
        handle_ipv4(f, len);
}

static int done(void)
{
    if (!limit || requests < limit)
        return 0;
    puts("Limit reached, exiting\n");
    if (verify) {
        puts("Verified ");
        put_u64(requests);
        puts(" packets, ");
        put_u64(corrupted);
        puts(" corrupted\n");
    }
    return 1;
}

static void parse_args(const char *p)
{
    while (*p) {
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        size_t n = (size_t)(p - w);
        if (n >= 5 && eq((const uint8_t *)w, (const uint8_t *)"limit", 5)) {
            limit = 100000;
            if (n > 6 && w[5] == '=') {
                limit = 0;
                for (size_t i = 6; i < n; i++)
                    limit = limit * 10 + (uint64_t)(w[i] - '0');
            }
        } else if (n == 6 && eq((const uint8_t *)w, (const uint8_t *)"verify", 6)) {
            verify = 1;
        } else if (n == 7 && eq((const uint8_t *)w, (const uint8_t *)"verbose", 7)) {
            verbose = 1;
        }
        while (*p == ' ')
            p++;
    }
}

int solo5_app_main(const struct solo5_start_info *si)
{
    header("net");
    parse_args(si->cmdline);
    for (int i = 0; i < 2; i++) {
        struct solo5_net_info ni;
        if (solo5_net_acquire(ifs[i].name, &ifs[i].handle, &ni) != SOLO5_R_OK)
            break;
        cpy(ifs[i].mac, ni.mac_address, 6);
        nifs++;
        if (i == 0 && !t_strcmp(si->cmdline, "mtu")) {
            puts("MTU is ");
            put_u64(ni.mtu);
            puts("\nSUCCESS\n");
            return SOLO5_EXIT_SUCCESS;
        }
        char macs[13];
        for (int k = 0; k < 6; k++) {
            macs[2 * k] = hex[ni.mac_address[k] >> 4];
            macs[2 * k + 1] = hex[ni.mac_address[k] & 15];
        }
        macs[12] = 0;
        prefix(&ifs[i]);
        puts(i ? "Serving ping on 10.1.0.2, with MAC: " : "Serving ping on 10.0.0.2, with MAC: ");
        puts(macs);
        puts("\n");
        announce(&ifs[i]);
    }
    if (nifs == 0)
        return 99;
    for (;;) {
        solo5_handle_set_t ready = 0;
        solo5_yield(solo5_clock_monotonic() + NSEC_PER_SEC, &ready);
        for (int i = 0; i < nifs; i++) {
            if (!(ready & (1ULL << ifs[i].handle)))
                continue;
            size_t n;
            solo5_result_t r = solo5_net_read(ifs[i].handle, buf, sizeof buf, &n);
            if (r != SOLO5_R_OK) {
                puts("Read error\nFAILURE\n");
                return SOLO5_EXIT_FAILURE;
            }
            do {
                handle_frame(&ifs[i], n);
                if (done()) {
                    if (corrupted)
                        return SOLO5_EXIT_FAILURE;
                    puts("SUCCESS\n");
                    return SOLO5_EXIT_SUCCESS;
                }
            } while (solo5_net_read(ifs[i].handle, buf, sizeof buf, &n) == SOLO5_R_OK);
        }
    }
}
