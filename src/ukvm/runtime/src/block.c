/* block.c: block devices through the BLOCK_READ/BLOCK_WRITE hypercalls. */
#include "runtime.h"

solo5_result_t solo5_block_acquire(const char *name, solo5_handle_t *handle,
                                   struct solo5_block_info *info)
{
    struct mft_entry *e = mft_lookup(name, MFT_DEV_BLOCK_BASIC, handle);
    if (!e)
        return SOLO5_R_EINVAL;
    info->capacity = e->u.block_basic.capacity;
    info->block_size = e->u.block_basic.block_size;
    return SOLO5_R_OK;
}

/* A request is one or more whole blocks at a block-aligned offset; the tender checks capacity. */
static solo5_result_t block_io(enum hvt_hypercall nr, solo5_handle_t handle, solo5_off_t offset,
                               const uint8_t *buf, size_t size)
{
    struct mft_entry *e = mft_by_handle(handle, MFT_DEV_BLOCK_BASIC);
    if (!e)
        return SOLO5_R_EINVAL;
    uint64_t bs = e->u.block_basic.block_size;
    if (bs == 0 || offset % bs != 0 || size == 0 || size % bs != 0)
        return SOLO5_R_EINVAL;
    struct hvt_hc_block_io arg = {
        .handle = handle, .offset = offset, .data = (uint64_t)(uintptr_t)buf, .len = size,
    };
    hvt_hypercall(nr, &arg);
    return (solo5_result_t)arg.ret;
}

solo5_result_t solo5_block_write(solo5_handle_t handle, solo5_off_t offset,
                                 const uint8_t *buf, size_t size)
{
    return block_io(HVT_HYPERCALL_BLOCK_WRITE, handle, offset, buf, size);
}

solo5_result_t solo5_block_read(solo5_handle_t handle, solo5_off_t offset,
                                uint8_t *buf, size_t size)
{
    return block_io(HVT_HYPERCALL_BLOCK_READ, handle, offset, buf, size);
}
