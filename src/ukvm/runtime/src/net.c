/* net.c: network devices through the NET_READ/NET_WRITE hypercalls. */
#include "runtime.h"

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
    struct hvt_hc_net_io arg = { .handle = handle, .data = (uint64_t)(uintptr_t)buf, .len = size };
    hvt_hypercall(HVT_HYPERCALL_NET_WRITE, &arg);
    return (solo5_result_t)arg.ret;
}

solo5_result_t solo5_net_read(solo5_handle_t handle, uint8_t *buf, size_t size, size_t *read_size)
{
    struct hvt_hc_net_io arg = { .handle = handle, .data = (uint64_t)(uintptr_t)buf, .len = size };
    hvt_hypercall(HVT_HYPERCALL_NET_READ, &arg);
    if (arg.ret == SOLO5_R_OK)
        *read_size = arg.len;
    return (solo5_result_t)arg.ret;
}
