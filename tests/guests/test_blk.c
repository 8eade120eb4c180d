/*
 * test_blk: block device `storage`: round trips every tenth block, the last block, rejects
 * requests at and past the end, wrong sizes and misaligned offsets; then the ukvm extras:
 * multi-block requests and tender-side checks reached with raw hypercalls.
 */
#include "testlib.h"
#include "../../src/ukvm/runtime/src/hvt.h"

#define MAX_BS 32768
static uint8_t wbuf[4 * MAX_BS] __attribute__((aligned(8))), rbuf[4 * MAX_BS] __attribute__((aligned(8)));

/* Word-sized pattern and compare: guest code at CPL0 is emulated per instruction on kvm_pvm. */
static void fill(uint8_t *b, size_t n, unsigned seed)
{
    uint64_t *w = (uint64_t *)b;
    for (size_t i = 0; i < n / 8; i++)
        w[i] = (seed + 1) * 0x9e3779b97f4a7c15ULL ^ i;
}

static int same(const uint8_t *a, const uint8_t *b, size_t n)
{
    const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
    for (size_t i = 0; i < n / 8; i++)
        if (x[i] != y[i])
            return 0;
    return 1;
}

static int32_t raw_io(enum hvt_hypercall nr, uint64_t handle, uint64_t offset, void *data, uint64_t len)
{
    struct hvt_hc_block_io a = { .handle = handle, .offset = offset,
                                 .data = (uint64_t)(uintptr_t)data, .len = len, .ret = -1 };
    hvt_hypercall(nr, &a);
    return a.ret;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    header("blk");
    solo5_handle_t h;
    struct solo5_block_info bi;
    if (solo5_block_acquire("storage", &h, &bi) != SOLO5_R_OK)
        return 99;
    /* Attacks: buffers the tender must refuse (fatal), selected by the command line. */
    if (!t_strcmp(si->cmdline, "read-into-text"))
        raw_io(HVT_HYPERCALL_BLOCK_READ, h, 0, (void *)(uintptr_t)&fill, bi.block_size);
    if (!t_strcmp(si->cmdline, "outside-memory"))
        raw_io(HVT_HYPERCALL_BLOCK_WRITE, h, 0, (void *)(uintptr_t)0xfffff000ULL, bi.block_size);
    if (si->cmdline[0])
        return 97;
    size_t bs = bi.block_size;
    puts("capacity ");
    put_u64(bi.capacity);
    puts(" block_size ");
    put_u64(bs);
    puts("\n");
    if (bs > MAX_BS)
        return 98;

    for (solo5_off_t off = 0; off < bi.capacity; off += 10 * bs) {
        fill(wbuf, bs, (unsigned)(off / bs));
        if (solo5_block_write(h, off, wbuf, bs) != SOLO5_R_OK ||
            solo5_block_read(h, off, rbuf, bs) != SOLO5_R_OK || !same(wbuf, rbuf, bs))
            return 1;
    }
    solo5_off_t last = bi.capacity - bs;
    fill(wbuf, bs, 7);
    if (solo5_block_write(h, last, wbuf, bs) != SOLO5_R_OK)
        return 2;
    if (solo5_block_read(h, last, rbuf, bs) != SOLO5_R_OK || !same(wbuf, rbuf, bs))
        return 3;
    if (solo5_block_write(h, bi.capacity, wbuf, bs) == SOLO5_R_OK)
        return 4;
    if (solo5_block_read(h, bi.capacity, rbuf, bs) == SOLO5_R_OK)
        return 5;
    if (solo5_block_write(h, 0, wbuf, bs - 1) == SOLO5_R_OK)
        return 6;
    if (solo5_block_write(h, 0, wbuf, bs + 1) == SOLO5_R_OK)
        return 7;
    if (solo5_block_read(h, 0, rbuf, bs - 1) == SOLO5_R_OK)
        return 8;
    if (solo5_block_read(h, 0, rbuf, bs + 1) == SOLO5_R_OK)
        return 9;
    if (solo5_block_write(h, bs - 1, wbuf, bs) == SOLO5_R_OK)
        return 10;
    if (solo5_block_read(h, bs - 1, rbuf, bs) == SOLO5_R_OK)
        return 11;

    /* ukvm: several blocks in one request, ending exactly at the last block. */
    if (bi.capacity >= 4 * bs) {
        solo5_off_t off = bi.capacity - 4 * bs;
        fill(wbuf, 4 * bs, 3);
        if (solo5_block_write(h, off, wbuf, 4 * bs) != SOLO5_R_OK)
            return 20;
        for (int i = 0; i < 4; i++)
            if (solo5_block_read(h, off + i * bs, rbuf, bs) != SOLO5_R_OK || !same(wbuf + i * bs, rbuf, bs))
                return 21;
        if (solo5_block_read(h, off, rbuf, 4 * bs) != SOLO5_R_OK || !same(wbuf, rbuf, 4 * bs))
            return 22;
        if (solo5_block_read(h, off + bs, rbuf, 4 * bs) == SOLO5_R_OK)   /* one block past the end */
            return 23;
    }
    /* Tender-side checks: unknown handles and ranges are EINVAL, never fatal. */
    if (raw_io(HVT_HYPERCALL_BLOCK_READ, 0, 0, rbuf, bs) != SOLO5_R_EINVAL)       /* reserved entry */
        return 30;
    if (raw_io(HVT_HYPERCALL_BLOCK_READ, 63, 0, rbuf, bs) != SOLO5_R_EINVAL)
        return 31;
    if (raw_io(HVT_HYPERCALL_BLOCK_WRITE, h, 0, wbuf, 1ULL << 63) != SOLO5_R_EINVAL)
        return 32;
    if (raw_io(HVT_HYPERCALL_BLOCK_WRITE, h, ~0ULL - 10, wbuf, 100) != SOLO5_R_EINVAL)
        return 33;
    if (raw_io(HVT_HYPERCALL_BLOCK_READ, h + (1ULL << 32), 0, rbuf, bs) != SOLO5_R_OK)  /* 32-bit lookup */
        return 34;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
