/* tls.c: thread-local storage for the local-exec model (x86_64 variant II: TLS below the TP). */
#include "runtime.h"

/* From the linker script: template start and sizes, which add up to the aligned TLS size. */
extern char _stdata[], _ltdata[], _ltbss[];

size_t solo5_tls_size(void)
{
    return (size_t)_ltdata + (size_t)_ltbss + sizeof(uintptr_t);
}

uintptr_t solo5_tls_tp_offset(uintptr_t tls)
{
    return tls + (uintptr_t)_ltdata + (uintptr_t)_ltbss;
}

solo5_result_t solo5_tls_init(uintptr_t tls)
{
    if (tls == 0)
        return SOLO5_R_EINVAL;
    uintptr_t tp = solo5_tls_tp_offset(tls);
    rt_memcpy((void *)tls, _stdata, (size_t)_ltdata);
    *(uintptr_t *)tp = tp;   /* the word at the thread pointer points to itself */
    return SOLO5_R_OK;
}

solo5_result_t solo5_set_tls_base(uintptr_t base)
{
    cpu_set_fs_base(base);
    return SOLO5_R_OK;
}
