/* test_blk2: two block devices at once; each gets its own pattern in every block. */
#include "testlib.h"

static uint64_t buf[4096 / 8];

static int pattern(const char *name, uint64_t seed)
{
    solo5_handle_t h;
    struct solo5_block_info bi;
    if (solo5_block_acquire(name, &h, &bi) != SOLO5_R_OK || bi.block_size > sizeof buf)
        return 0;
    for (solo5_off_t off = 0; off < bi.capacity; off += bi.block_size) {
        for (size_t i = 0; i < bi.block_size / 8; i++)
            buf[i] = seed ^ (off + i * 8);
        if (solo5_block_write(h, off, (uint8_t *)buf, bi.block_size) != SOLO5_R_OK)
            return 0;
    }
    return 1;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("blk2");
    if (!pattern("disk0", 0x1111111111111111ULL) || !pattern("disk1", 0x2222222222222222ULL))
        return 1;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
