/*
 * httpd.c: a small HTTP/1.0 server on lwIP's raw TCP API, with the glue that runs lwIP on the
 * solo5 API: a netif over solo5_net_read/solo5_net_write, lwIP's clock and timers on
 * solo5_clock_monotonic, and a main loop that sleeps in solo5_yield until a frame arrives or
 * the next lwIP timer is due.
 *
 * Every response says how many requests this VM instance has served. Under `ukvm serve` each
 * request gets a fresh clone of the VM, so it is always 1 there; a long-running server counts
 * up. Two paths exist for testing a host's isolation: /crash aborts the guest, /spin never
 * answers.
 *
 * Command line: [--ipv4=A.B.C.D/PREFIX] [--ipv4-gateway=A.B.C.D] [--port=N]
 * (defaults 10.0.0.2/24, 10.0.0.1, 80).
 */
#include <string.h>
#include "solo5.h"
#include "lwip/init.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/timeouts.h"
#include "lwip/etharp.h"
#include "netif/ethernet.h"

#define BODY_SIZE 1900
#define REQUEST_MAX 2048

static solo5_handle_t net_handle;
static struct solo5_net_info net_info;
static struct netif nif;
static uint8_t frame[65536];
static unsigned long requests_served;
static uint64_t random_state;

/* --- small helpers (no C library here) ---------------------------------------------------- */
static void puts_(const char *s)
{
    solo5_console_write(s, strlen(s));
}

static char *put_uint(char *p, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static int starts_with(const char *s, const char *prefix)
{
    return memcmp(s, prefix, strlen(prefix)) == 0;
}

/* "A.B.C.D" (and "/PREFIX" when prefix != NULL); 0 on success. */
static int parse_ipv4(const char *s, uint32_t *addr, int *prefix)
{
    uint32_t a = 0;
    for (int part = 0; part < 4; part++) {
        unsigned v = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 3)
            v = v * 10 + (unsigned)(*s++ - '0'), digits++;
        if (!digits || v > 255 || (part < 3 && *s++ != '.'))
            return -1;
        a = (a << 8) | v;
    }
    if (prefix) {
        unsigned v = 0;
        if (*s++ != '/' || *s < '0' || *s > '9')
            return -1;
        while (*s >= '0' && *s <= '9')
            v = v * 10 + (unsigned)(*s++ - '0');
        if (v > 32)
            return -1;
        *prefix = (int)v;
    }
    *addr = a;
    return *s ? -1 : 0;
}

void ukvm_lwip_assert(const char *message, const char *file, int line)
{
    char buf[32];
    puts_("httpd: lwIP assertion failed: ");
    puts_(message);
    puts_(" at ");
    puts_(file);
    puts_(":");
    *put_uint(buf, (unsigned long)line) = 0;
    puts_(buf);
    puts_("\n");
    solo5_abort();
}

/* Seeded from the wall clock at boot: every clone of one snapshot starts from the same state,
 * so the cycle counter is mixed in at each draw (docs/serve.md: what clones share). */
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

unsigned ukvm_random(void)
{
    random_state ^= rdtsc();
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return (unsigned)random_state;
}

u32_t sys_now(void)
{
    return (u32_t)(solo5_clock_monotonic() / 1000000ULL);
}

/* --- the netif ----------------------------------------------------------------------------- */
static err_t nif_linkoutput(struct netif *n, struct pbuf *p)
{
    (void)n;
    if (p->tot_len > sizeof frame)
        return ERR_BUF;
    u16_t len = pbuf_copy_partial(p, frame, p->tot_len, 0);
    return solo5_net_write(net_handle, frame, len) == SOLO5_R_OK ? ERR_OK : ERR_IF;
}

static err_t nif_init(struct netif *n)
{
    n->name[0] = 'e';
    n->name[1] = '0';
    n->linkoutput = nif_linkoutput;
    n->output = etharp_output;
    n->mtu = (u16_t)net_info.mtu;
    n->hwaddr_len = ETH_HWADDR_LEN;
    memcpy(n->hwaddr, net_info.mac_address, ETH_HWADDR_LEN);
    n->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_LINK_UP;
    return ERR_OK;
}

/* Hand every waiting frame to lwIP. */
static void receive_frames(void)
{
    size_t len;
    size_t room = net_info.mtu + SIZEOF_ETH_HDR;
    if (room > sizeof frame)
        room = sizeof frame;
    while (solo5_net_read(net_handle, frame, room, &len) == SOLO5_R_OK) {
        struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)len, PBUF_POOL);
        if (p == NULL)
            continue;                 /* out of buffers: drop, TCP retransmits */
        pbuf_take(p, frame, (u16_t)len);
        if (nif.input(p, &nif) != ERR_OK)
            pbuf_free(p);
    }
}

/* --- HTTP ---------------------------------------------------------------------------------- */
struct http_conn {
    size_t used;
    char request[REQUEST_MAX];
};

static struct http_conn conns[MEMP_NUM_TCP_PCB];
static uint8_t conn_busy[MEMP_NUM_TCP_PCB];

static struct http_conn *conn_alloc(void)
{
    for (int i = 0; i < MEMP_NUM_TCP_PCB; i++)
        if (!conn_busy[i]) {
            conn_busy[i] = 1;
            conns[i].used = 0;
            return &conns[i];
        }
    return NULL;
}

static void conn_free(struct http_conn *c)
{
    conn_busy[c - conns] = 0;
}

static void close_conn(struct tcp_pcb *pcb, struct http_conn *c)
{
    tcp_arg(pcb, NULL);
    tcp_recv(pcb, NULL);
    tcp_err(pcb, NULL);
    if (c)
        conn_free(c);
    if (tcp_close(pcb) != ERR_OK)
        tcp_abort(pcb);
}

static void respond(struct tcp_pcb *pcb, const char *path, size_t path_len)
{
    static char body[BODY_SIZE + 1];
    static char head[256];
    char *p = body;

    requests_served++;
    p = put_str(p, "ukvm lwIP httpd\nrequests served by this VM instance: ");
    p = put_uint(p, requests_served);
    p = put_str(p, "\npath: ");
    if (path_len > 200)
        path_len = 200;
    memcpy(p, path, path_len);
    p += path_len;
    *p++ = '\n';
    while (p < body + BODY_SIZE - 1)     /* a fixed size, so clients can check every byte */
        *p++ = (char)('a' + (p - body) % 26);
    *p++ = '\n';

    char *h = put_str(head, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ");
    h = put_uint(h, (unsigned long)(p - body));
    h = put_str(h, "\r\nConnection: close\r\n\r\n");
    tcp_write(pcb, head, (u16_t)(h - head), TCP_WRITE_FLAG_COPY | TCP_WRITE_FLAG_MORE);
    tcp_write(pcb, body, (u16_t)(p - body), TCP_WRITE_FLAG_COPY);
    tcp_output(pcb);
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    struct http_conn *c = arg;
    if (p == NULL || err != ERR_OK) {          /* the client closed, or an error */
        if (p)
            pbuf_free(p);
        close_conn(pcb, c);
        return ERR_OK;
    }
    size_t room = sizeof c->request - 1 - c->used;
    size_t n = p->tot_len < room ? p->tot_len : room;
    pbuf_copy_partial(p, c->request + c->used, (u16_t)n, 0);
    tcp_recved(pcb, p->tot_len);
    pbuf_free(p);
    c->used += n;
    c->request[c->used] = 0;

    /* Wait for the end of the header ("\r\n\r\n"), or give up when it does not fit. */
    int complete = 0;
    for (size_t i = 3; i < c->used; i++)
        if (c->request[i - 3] == '\r' && c->request[i - 2] == '\n' && c->request[i - 1] == '\r'
            && c->request[i] == '\n')
            complete = 1;
    if (!complete && c->used < sizeof c->request - 1)
        return ERR_OK;
    if (!starts_with(c->request, "GET ")) {
        close_conn(pcb, c);
        return ERR_OK;
    }
    const char *path = c->request + 4;
    size_t path_len = 0;
    while (path[path_len] && path[path_len] != ' ' && path[path_len] != '\r')
        path_len++;
    if (path_len == 6 && starts_with(path, "/crash"))
        solo5_abort();
    if (path_len == 5 && starts_with(path, "/spin"))
        for (;;)
            __asm__ volatile("" ::: "memory");
    respond(pcb, path, path_len);
    close_conn(pcb, c);       /* lwIP sends what is queued, then FIN */
    return ERR_OK;
}

static void on_error(void *arg, err_t err)
{
    (void)err;
    if (arg)
        conn_free(arg);
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    (void)arg;
    if (err != ERR_OK || pcb == NULL)
        return ERR_VAL;
    struct http_conn *c = conn_alloc();
    if (c == NULL) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    tcp_arg(pcb, c);
    tcp_recv(pcb, on_recv);
    tcp_err(pcb, on_error);
    return ERR_OK;
}

/* --- start-up and main loop ---------------------------------------------------------------- */
int solo5_app_main(const struct solo5_start_info *si)
{
    uint32_t addr = 0x0a000002, gw = 0x0a000001, port = 80;
    int prefix = 24;
    const char *arg = si->cmdline;
    while (*arg) {
        char word[64];
        size_t n = 0;
        while (*arg == ' ')
            arg++;
        while (*arg && *arg != ' ' && n < sizeof word - 1)
            word[n++] = *arg++;
        word[n] = 0;
        int bad = 0;
        if (n == 0)
            break;
        if (starts_with(word, "--ipv4="))
            bad = parse_ipv4(word + 7, &addr, &prefix);
        else if (starts_with(word, "--ipv4-gateway="))
            bad = parse_ipv4(word + 15, &gw, NULL);
        else if (starts_with(word, "--port=")) {
            port = 0;
            for (const char *d = word + 7; *d >= '0' && *d <= '9'; d++)
                port = port * 10 + (uint32_t)(*d - '0');
            bad = port == 0 || port > 65535;
        } else
            bad = 1;
        if (bad) {
            puts_("httpd: bad argument: ");
            puts_(word);
            puts_("\nusage: [--ipv4=A.B.C.D/PREFIX] [--ipv4-gateway=A.B.C.D] [--port=N]\n");
            return 2;
        }
    }
    if (solo5_net_acquire("service0", &net_handle, &net_info) != SOLO5_R_OK) {
        puts_("httpd: no network device 'service0'\n");
        return 1;
    }
    random_state = solo5_clock_wall() ^ 0x9e3779b97f4a7c15ULL;

    ip4_addr_t ip, mask, gateway;
    ip4_addr_set_u32(&ip, lwip_htonl(addr));
    ip4_addr_set_u32(&mask, lwip_htonl(prefix ? 0xffffffffU << (32 - prefix) : 0));
    ip4_addr_set_u32(&gateway, lwip_htonl(gw));
    lwip_init();
    netif_add(&nif, &ip, &mask, &gateway, NULL, nif_init, netif_input);
    netif_set_default(&nif);
    netif_set_up(&nif);

    struct tcp_pcb *listener = tcp_new_ip_type(IPADDR_TYPE_V4);
    if (listener == NULL || tcp_bind(listener, IP4_ADDR_ANY, (u16_t)port) != ERR_OK) {
        puts_("httpd: cannot bind the port\n");
        return 1;
    }
    listener = tcp_listen(listener);
    tcp_accept(listener, on_accept);

    char line[64], *p = put_str(line, "httpd: listening on port ");
    p = put_uint(p, port);
    *p++ = '\n';
    *p = 0;
    puts_(line);

    for (;;) {
        sys_check_timeouts();
        u32_t sleep_ms = sys_timeouts_sleeptime();
        if (sleep_ms > 1000)
            sleep_ms = 1000;
        solo5_handle_set_t ready = 0;
        solo5_yield(solo5_clock_monotonic() + (uint64_t)sleep_ms * 1000000ULL, &ready);
        if (ready & (1ULL << net_handle))
            receive_frames();
    }
}
