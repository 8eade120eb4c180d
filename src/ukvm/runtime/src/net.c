/*
 * net.c: network devices. With the shared ring offered (boot info host_features bit 0 and
 * net_ring set) frames go through it: writes are copied into a staging buffer and submitted
 * without waiting, reads are submitted and their commit awaited. Otherwise, and for frames
 * larger than a staging buffer, the NET_READ/NET_WRITE hypercalls are used.
 */
#include "runtime.h"

#define STAGING_SIZE 2048
#define STAGING_SLOTS 64   /* writes in flight; a slot is reused only once the host consumed it */

static struct hvt_ring *ring;
static uint32_t next_id;
static uint8_t staging[STAGING_SLOTS][STAGING_SIZE] __attribute__((aligned(64)));

void net_init(const struct hvt_boot_info *bi)
{
    if ((bi->host_features & HVT_FEATURE_RING_IO) && bi->net_ring)
        ring = (struct hvt_ring *)(uintptr_t)bi->net_ring;
}

static inline void full_barrier(void)
{
    /* A locked no-op orders the ent_tail store before the needs_kick load (no SSE mfence). */
    __asm__ __volatile__("lock orl $0, (%%rsp)" ::: "memory", "cc");
}

static void ring_submit(uint32_t op, solo5_handle_t handle, uint64_t data, uint32_t len)
{
    uint32_t tail = ring->ent_tail;
    struct hvt_ring_entry *e = &ring->entries[tail & (HVT_RING_SIZE - 1)];
    e->operation = op;
    e->handle = (uint32_t)handle;
    e->data = data;
    e->len = len;
    e->id = next_id++;
    __asm__ __volatile__("" ::: "memory");   /* x86 keeps stores in order */
    ring->ent_tail = tail + 1;
    full_barrier();
    if (ring->needs_kick)
        __asm__ __volatile__("outl %0, %1" : : "a"(0), "d"((uint16_t)HVT_RING_KICK_PORT) : "memory");
}

solo5_result_t solo5_net_acquire(const char *name, solo5_handle_t *handle,
                                 struct solo5_net_info *info)
{
    struct mft_entry *e = mft_lookup(name, MFT_DEV_NET_BASIC, handle);
    if (!e)
        return SOLO5_R_EINVAL;
    rt_memcpy(info->mac_address, e->u.net_basic.mac, SOLO5_NET_ALEN);
    info->mtu = e->u.net_basic.mtu;
    return SOLO5_R_OK;
}

solo5_result_t solo5_net_write(solo5_handle_t handle, const uint8_t *buf, size_t size)
{
    if (ring && size <= STAGING_SIZE) {
        while (ring->ent_tail - ring->ent_head >= STAGING_SLOTS)
            __asm__ __volatile__("pause" ::: "memory");
        uint8_t *slot = staging[ring->ent_tail % STAGING_SLOTS];
        rt_memcpy(slot, buf, size);
        ring_submit(HVT_RING_NET_WRITE, handle, (uint64_t)(uintptr_t)slot, (uint32_t)size);
        return SOLO5_R_OK;
    }
    struct hvt_hc_net_io arg = { .handle = handle, .data = (uint64_t)(uintptr_t)buf, .len = size };
    hvt_hypercall(HVT_HYPERCALL_NET_WRITE, &arg);
    return (solo5_result_t)arg.ret;
}

solo5_result_t solo5_net_read(solo5_handle_t handle, uint8_t *buf, size_t size, size_t *read_size)
{
    if (ring && size <= 0xffffffffU) {
        while (ring->ent_tail - ring->ent_head >= HVT_RING_SIZE - 1)
            __asm__ __volatile__("pause" ::: "memory");
        ring_submit(HVT_RING_NET_READ, handle, (uint64_t)(uintptr_t)buf, (uint32_t)size);
        while (ring->com_tail == ring->com_head)
            __asm__ __volatile__("pause" ::: "memory");
        volatile struct hvt_ring_commit *c = &ring->commits[ring->com_head & (HVT_RING_SIZE - 1)];
        solo5_result_t ret = (solo5_result_t)c->ret;
        if (ret == SOLO5_R_OK)
            *read_size = c->len;
        ring->com_head = ring->com_head + 1;
        return ret;
    }
    struct hvt_hc_net_io arg = { .handle = handle, .data = (uint64_t)(uintptr_t)buf, .len = size };
    hvt_hypercall(HVT_HYPERCALL_NET_READ, &arg);
    if (arg.ret == SOLO5_R_OK)
        *read_size = arg.len;
    return (solo5_result_t)arg.ret;
}
