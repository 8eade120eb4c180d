/* test_mft_maxdevices: a manifest with 63 block devices, the maximum; the first and last work. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("mft_maxdevices");
    solo5_handle_t h0, h62;
    struct solo5_block_info bi;
    if (solo5_block_acquire("storage0", &h0, &bi) != SOLO5_R_OK || h0 != 1 ||
        solo5_block_acquire("storage62", &h62, &bi) != SOLO5_R_OK || h62 != 63) {
        puts("FAILURE\n");
        return SOLO5_EXIT_FAILURE;
    }
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
