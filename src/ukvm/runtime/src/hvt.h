/* hvt.h: the guest side of the hvt ABI: boot info, hypercall structs and the hypercall itself. */
#ifndef UKVM_HVT_H
#define UKVM_HVT_H

#include <stdint.h>

#define HVT_HYPERCALL_PIO_BASE 0x500
enum hvt_hypercall {
    HVT_HYPERCALL_WALLTIME = 1,
    HVT_HYPERCALL_PUTS,
    HVT_HYPERCALL_POLL,
    HVT_HYPERCALL_BLOCK_WRITE,
    HVT_HYPERCALL_BLOCK_READ,
    HVT_HYPERCALL_NET_WRITE,
    HVT_HYPERCALL_NET_READ,
    HVT_HYPERCALL_HALT
};

/* Written by the tender at 0x10000; the pointers are guest-physical (= virtual). */
struct hvt_boot_info {
    uint64_t mem_size;
    uint64_t kernel_end;
    uint64_t cpu_cycle_freq;
    uint64_t cmdline;
    uint64_t mft;
    uint32_t host_features;
    uint32_t guest_features;
    uint64_t net_ring;
};

struct hvt_hc_walltime { uint64_t nsecs; /* OUT */ };
struct hvt_hc_puts { uint64_t data; uint64_t len; /* IN */ };
struct hvt_hc_poll {
    uint64_t timeout_nsecs;  /* IN */
    uint64_t ready_set;      /* OUT */
    int32_t ret;             /* OUT */
};
struct hvt_hc_block_io {
    uint64_t handle, offset, data, len;  /* IN */
    int32_t ret;                         /* OUT */
};
struct hvt_hc_net_io {
    uint64_t handle, data;   /* IN */
    uint64_t len;            /* IN: buffer size; OUT (read): frame size */
    int32_t ret;             /* OUT */
};
struct hvt_hc_halt {
    uint64_t cookie;         /* IN: trap frame or 0 */
    int32_t exit_status;     /* IN */
};

/* The v0.12 shared network ring (host_features bit 0, boot info net_ring). */
#define HVT_FEATURE_RING_IO 1
#define UKVM_FEATURE_CPL3 (1U << 31)   /* ukvm tender: user page tables and CR4.FSGSBASE */
#define UKVM_FEATURE_DEBUG (1U << 30)  /* ukvm tender under --gdb: report #DB and int3 (cpu.c) */
#define HVT_RING_SIZE 1024
#define HVT_RING_KICK_PORT 0x600
enum hvt_ring_op { HVT_RING_NET_WRITE = 1, HVT_RING_NET_READ = 2 };

struct hvt_ring_entry {
    uint32_t operation;
    uint32_t handle;
    uint64_t data;
    uint32_t len;
    uint32_t id;
    uint64_t reserved;
};

struct hvt_ring_commit {
    uint32_t id;
    int32_t ret;
    uint32_t len;
    uint32_t reserved;
};

struct hvt_ring {
    volatile uint32_t ent_tail;    /* guest: entries produced */
    volatile uint32_t com_head;    /* guest: commits consumed */
    uint8_t pad0[56];
    volatile uint32_t ent_head;    /* host: entries consumed */
    volatile uint32_t com_tail;    /* host: commits produced */
    volatile uint32_t needs_kick;  /* host: about to sleep, kick port 0x600 */
    uint8_t pad1[52];
    struct hvt_ring_entry entries[HVT_RING_SIZE];
    volatile struct hvt_ring_commit commits[HVT_RING_SIZE];
};
_Static_assert(sizeof(struct hvt_ring) == 49280, "hvt_ring layout");

/* One 32-bit OUT of the argument's address; the vCPU stops until the tender is done with it. */
static inline void hvt_hypercall(enum hvt_hypercall nr, volatile void *arg)
{
    __asm__ __volatile__("outl %0, %1"
                         :
                         : "a"((uint32_t)(uintptr_t)arg),
                           "d"((uint16_t)(HVT_HYPERCALL_PIO_BASE + nr))
                         : "memory");
}

#endif
