/* lwipopts.h: lwIP configured for one NIC, IPv4 and TCP, no OS (NO_SYS): the httpd example
 * drives lwIP from its own loop over the solo5 API (httpd.c). */
#ifndef UKVM_LWIPOPTS_H
#define UKVM_LWIPOPTS_H

#define NO_SYS                  1
#define SYS_LIGHTWEIGHT_PROT    0
#define LWIP_SOCKET             0
#define LWIP_NETCONN            0
#define LWIP_IPV4               1
#define LWIP_IPV6               0
#define LWIP_ARP                1
#define LWIP_ETHERNET           1
#define LWIP_ICMP               1
#define LWIP_TCP                1
#define LWIP_UDP                0
#define LWIP_DHCP               0
#define LWIP_DNS                0
#define LWIP_IGMP               0
#define LWIP_RAW                0
#define LWIP_STATS              0
#define LWIP_NETIF_LOOPBACK     0
#define LWIP_HAVE_LOOPIF        0

#define MEM_ALIGNMENT           8
#define MEM_SIZE                (256 * 1024)
#define MEMP_NUM_PBUF           64
#define MEMP_NUM_TCP_PCB        32
#define MEMP_NUM_TCP_PCB_LISTEN 2
#define MEMP_NUM_TCP_SEG        128
#define PBUF_POOL_SIZE          64
#define PBUF_POOL_BUFSIZE       1536

#define TCP_MSS                 1460
#define TCP_WND                 (16 * TCP_MSS)
#define TCP_SND_BUF             (16 * TCP_MSS)
#define TCP_SND_QUEUELEN        64
#define TCP_LISTEN_BACKLOG      1
#define LWIP_TCP_KEEPALIVE      0

/* Randomness for initial sequence numbers and ports: see httpd.c (ukvm_random). */
unsigned ukvm_random(void);
#define LWIP_RAND()             ukvm_random()

#define LWIP_NOASSERT_ON_ERROR  1
#define LWIP_DEBUG              0

#endif
