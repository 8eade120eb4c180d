/*
 * test_blkloop: writes block N = pattern(N) over the whole device, announcing "ack N" after
 * each write the tender acknowledged; with "verify" it checks the pattern instead. Used to show
 * that acknowledged writes survive the tender being killed, and survive a reboot.
 */
#include "testlib.h"

static uint64_t buf[4096 / 8], want[4096 / 8];

static void pattern(uint64_t *b, size_t words, uint64_t block)
{
    for (size_t i = 0; i < words; i++)
        b[i] = (block + 1) * 0x9e3779b97f4a7c15ULL ^ i;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    solo5_handle_t h;
    struct solo5_block_info bi;
    if (solo5_block_acquire("storage", &h, &bi) != SOLO5_R_OK || bi.block_size > sizeof buf)
        return 99;
    size_t words = bi.block_size / 8;
    uint64_t blocks = bi.capacity / bi.block_size;
    int verify = !t_strcmp(si->cmdline, "verify");
    for (uint64_t n = 0; n < blocks; n++) {
        if (verify) {
            pattern(want, words, n);
            if (solo5_block_read(h, n * bi.block_size, (uint8_t *)buf, bi.block_size) != SOLO5_R_OK)
                return 2;
            for (size_t i = 0; i < words; i++)
                if (buf[i] != want[i])
                    return 3;
        } else {
            pattern(buf, words, n);
            if (solo5_block_write(h, n * bi.block_size, (uint8_t *)buf, bi.block_size) != SOLO5_R_OK)
                return 1;
            puts("ack ");
            put_u64(n);
            puts("\n");
        }
    }
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
