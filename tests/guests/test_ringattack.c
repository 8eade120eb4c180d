/*
 * test_ringattack: writes hostile entries straight into the shared ring, then spins inside the
 * guest as a ring reader would. The tender's ring thread must stop the VM with an error.
 *   badptr  a NET_WRITE entry whose frame lies outside guest memory
 *   index   ent_tail far ahead of ent_head
 */
#include "testlib.h"
#include "../../src/ukvm/runtime/src/hvt.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    const struct hvt_boot_info *bi = (const struct hvt_boot_info *)(uintptr_t)0x10000;
    struct solo5_net_info ni;
    solo5_handle_t h;
    if (solo5_net_acquire("service0", &h, &ni) != SOLO5_R_OK)
        return 99;
    if (!(bi->host_features & HVT_FEATURE_RING_IO) || !bi->net_ring) {
        puts("no ring offered\n");
        return 98;
    }
    struct hvt_ring *ring = (struct hvt_ring *)(uintptr_t)bi->net_ring;
    if (!t_strcmp(si->cmdline, "badptr")) {
        struct hvt_ring_entry *e = &ring->entries[ring->ent_tail & (HVT_RING_SIZE - 1)];
        e->operation = HVT_RING_NET_WRITE;
        e->handle = (uint32_t)h;
        e->data = 0xfffffff000ULL;
        e->len = 64;
        ring->ent_tail = ring->ent_tail + 1;
    } else if (!t_strcmp(si->cmdline, "index")) {
        ring->ent_tail = ring->ent_head + 5000;
    } else {
        return 97;
    }
    __asm__ __volatile__("lock orl $0, (%%rsp)\n\toutl %0, %1" : : "a"(0), "d"((uint16_t)0x600) : "memory");
    puts("attacking\n");
    for (;;)
        __asm__ __volatile__("pause" ::: "memory");   /* never exits to the tender by itself */
}
