/*
 * test_serve_hostile: a guest for `ukvm serve` that misbehaves when a client asks it to.
 *
 * It answers TCP on 10.0.0.2:80 (service0) with the least TCP that works: a SYN gets a SYN-ACK,
 * the first data segment gets one segment with the answer and FIN. The answer to GET /ok is
 * "served N" (N: requests this instance answered, 1 in a fresh clone). Any other path names an
 * attack, made instead of answering:
 *   /argptr /dataptr /overflow /port /cookie   the hypercall attacks of test_hostile.c
 *   /loop      spin until the deadline
 *   /spoof     frames to other connections' ports, from other addresses, to broadcast, to
 *              other hosts; then exit
 *   /arp       ARP replies and requests claiming the host's and other addresses; then exit
 *   /flood     20000 frames as fast as the NIC takes them; then exit
 * Replies go to the MAC the frame came from: it needs no ARP of its own. With the command line
 * "slowboot" it waits 3 s before answering anything (serve's boot can then be looked at).
 */
#include "testlib.h"
#include "../../src/ukvm/runtime/src/hvt.h"

static const uint8_t my_ip[4] = { 10, 0, 0, 2 };
static uint8_t my_mac[6];
static solo5_handle_t nic;
static uint8_t in[2048], out[2048];
static uint64_t served;

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static void cpy(uint8_t *d, const void *s, size_t n) { const uint8_t *q = s; while (n--) *d++ = *q++; }
static int eq(const uint8_t *a, const void *b, size_t n) { const uint8_t *q = b; while (n--) if (*a++ != *q++) return 0; return 1; }

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += be16(p + i);
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* An IPv4/TCP frame in out[]: dst MAC, src/dst IP, ports, seq/ack, flags, payload. */
static size_t tcp(const uint8_t *dmac, const uint8_t *sip, const uint8_t *dip, uint16_t sport, uint16_t dport,
                  uint32_t seq, uint32_t ack, uint8_t flags, const char *data, size_t len)
{
    uint8_t *ip = out + 14, *t = out + 34;
    cpy(out, dmac, 6);
    cpy(out + 6, my_mac, 6);
    put16(out + 12, 0x0800);
    ip[0] = 0x45; ip[1] = 0;
    put16(ip + 2, (uint16_t)(40 + len));
    put16(ip + 4, 0); put16(ip + 6, 0x4000);
    ip[8] = 64; ip[9] = 6;
    put16(ip + 10, 0);
    cpy(ip + 12, sip, 4);
    cpy(ip + 16, dip, 4);
    put16(ip + 10, fold(sum16(ip, 20, 0)));
    put16(t, sport); put16(t + 2, dport);
    put32(t + 4, seq); put32(t + 8, ack);
    t[12] = 5 << 4; t[13] = flags;
    put16(t + 14, 8192); put16(t + 16, 0); put16(t + 18, 0);
    cpy(t + 20, data, len);
    uint32_t pseudo = sum16(sip, 4, 0) + sum16(dip, 4, 0) + 6 + 20 + (uint32_t)len;
    put16(t + 16, fold(sum16(t, 20 + len, pseudo)));
    return 54 + len;
}

static void send(size_t len)
{
    solo5_net_write(nic, out, len);
}

static void hypercall_attack(const char *a)
{
    static struct hvt_hc_puts arg;
    if (!t_strcmp(a, "argptr")) {
        __asm__ __volatile__("outl %0, %1" : : "a"(0xfffffff0u), "d"((uint16_t)(0x500 + HVT_HYPERCALL_PUTS)));
    } else if (!t_strcmp(a, "dataptr") || !t_strcmp(a, "overflow")) {
        arg.data = a[0] == 'd' ? 0xfffffffff000ULL : 0x200000;
        arg.len = a[0] == 'd' ? 16 : 0xffffffffffffffffULL;
        __asm__ __volatile__("outl %0, %1" : : "a"((uint32_t)(uintptr_t)&arg),
                             "d"((uint16_t)(0x500 + HVT_HYPERCALL_PUTS)) : "memory");
    } else if (!t_strcmp(a, "port")) {
        __asm__ __volatile__("outl %0, %1" : : "a"(0), "d"((uint16_t)0x400));
    } else if (!t_strcmp(a, "cookie")) {
        static struct hvt_hc_halt h = { .cookie = 0xfffffffffffff000ULL, .exit_status = 0 };
        __asm__ __volatile__("outl %0, %1" : : "a"((uint32_t)(uintptr_t)&h),
                             "d"((uint16_t)(0x500 + HVT_HYPERCALL_HALT)) : "memory");
    } else if (!t_strcmp(a, "loop")) {
        for (;;)
            __asm__ __volatile__("" ::: "memory");
    }
}

static void net_attack(const char *a, const uint8_t *hmac, const uint8_t *hip, uint16_t cport)
{
    static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    static const uint8_t other_ip[4] = { 10, 0, 0, 3 }, far_ip[4] = { 192, 0, 2, 1 };
    if (!t_strcmp(a, "spoof")) {
        for (uint16_t p = 1; p <= 200; p++) {            /* other connections' ports */
            send(tcp(hmac, my_ip, hip, 80, (uint16_t)(cport + p), 1, 1, 0x18, "stolen", 6));
            send(tcp(hmac, my_ip, hip, 80, (uint16_t)(cport - p), 1, 1, 0x04, "", 0));   /* RST theirs */
        }
        send(tcp(hmac, other_ip, hip, 80, cport, 1, 1, 0x18, "spoofed source", 14));
        send(tcp(hmac, my_ip, hip, 81, cport, 1, 1, 0x18, "wrong port", 10));
        send(tcp(bcast, my_ip, hip, 80, cport, 1, 1, 0x18, "broadcast", 9));
        send(tcp(hmac, my_ip, far_ip, 80, 80, 1, 1, 0x02, "", 0));
        send(tcp(hmac, my_ip, hip, 80, 22, 1, 0, 0x02, "", 0));   /* a SYN to the host's ssh */
    } else if (!t_strcmp(a, "arp")) {
        for (int i = 0; i < 50; i++) {
            uint8_t *p = out + 14;
            cpy(out, i & 1 ? bcast : hmac, 6);
            cpy(out + 6, my_mac, 6);
            put16(out + 12, 0x0806);
            put16(p, 1); put16(p + 2, 0x0800); p[4] = 6; p[5] = 4;
            put16(p + 6, i & 2 ? 1 : 2);               /* requests and replies */
            cpy(p + 8, my_mac, 6);
            cpy(p + 14, i & 4 ? hip : other_ip, 4);    /* "the host's address is mine" */
            cpy(p + 18, hmac, 6);
            cpy(p + 24, i & 8 ? far_ip : hip, 4);
            send(42);
        }
    } else if (!t_strcmp(a, "flood")) {
        for (int i = 0; i < 20000; i++)
            send(tcp(i & 1 ? bcast : hmac, my_ip, hip, 80, (uint16_t)(cport + (i & 7)), (uint32_t)i, 1, 0x18,
                     "floodfloodfloodfloodfloodfloodfloodfloodfloodflood", 50));
    } else {
        return;
    }
    solo5_exit(3);
}

static void handle(size_t n)
{
    if (n < 54 || be16(in + 12) != 0x0800 || in[23] != 6 || !eq(in + 30, my_ip, 4))
        return;
    size_t ihl = (size_t)(in[14] & 15) * 4, total = be16(in + 16);
    if (ihl < 20 || total > n - 14)
        return;
    const uint8_t *t = in + 14 + ihl, *hmac = in + 6, *hip = in + 26;
    if (14 + ihl + 20 > n || be16(t + 2) != 80)
        return;
    size_t thl = (size_t)(t[12] >> 4) * 4;
    if (thl < 20 || ihl + thl > total)
        return;
    uint16_t cport = be16(t);
    uint32_t seq = be32(t + 4);
    uint8_t flags = t[13];
    const char *data = (const char *)t + thl;
    size_t len = total - ihl - thl;
    if (flags & 0x04)
        return;                                            /* RST: nothing to do */
    if (flags & 0x02) {                                    /* SYN */
        send(tcp(hmac, my_ip, hip, 80, cport, 1000, seq + 1, 0x12, "", 0));
        return;
    }
    if (len < 5 || data[0] != 'G' || data[4] != '/')
        return;
    char path[32];
    size_t i = 0;
    while (i + 1 < sizeof path && 5 + i < len && data[5 + i] != ' ')
        path[i] = data[5 + i], i++;
    path[i] = 0;
    if (!t_strcmp(path, "ok")) {
        static char answer[] = "HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nserved 0\n";
        answer[sizeof answer - 3] = (char)('0' + (++served % 10));
        send(tcp(hmac, my_ip, hip, 80, cport, 1001, seq + (uint32_t)len, 0x19, answer, sizeof answer - 1));
        return;
    }
    hypercall_attack(path);
    net_attack(path, hmac, hip, cport);
    static const char bad[] = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    send(tcp(hmac, my_ip, hip, 80, cport, 1001, seq + (uint32_t)len, 0x19, bad, sizeof bad - 1));
}

int solo5_app_main(const struct solo5_start_info *si)
{
    struct solo5_net_info info;
    if (solo5_net_acquire("service0", &nic, &info) != SOLO5_R_OK) {
        puts("no service0\n");
        return 1;
    }
    cpy(my_mac, info.mac_address, 6);
    if (!t_strcmp(si->cmdline, "slowboot")) {   /* 3 s before it answers: the boot can be watched */
        puts("booting slowly\n");
        solo5_time_t until = solo5_clock_monotonic() + 3000000000ULL;
        while (solo5_clock_monotonic() < until) {
            solo5_handle_set_t ready = 0;
            size_t n;
            solo5_yield(until, &ready);
            while (solo5_net_read(nic, in, sizeof in, &n) == SOLO5_R_OK)
                ;
        }
    }
    puts("hostile server ready\n");
    for (;;) {
        solo5_handle_set_t ready = 0;
        solo5_yield(solo5_clock_monotonic() + 1000000000ULL, &ready);
        size_t n;
        while (solo5_net_read(nic, in, sizeof in, &n) == SOLO5_R_OK)
            handle(n);
    }
}
