/* test_fpu: SSE works (movaps/mulps through xmm1) and scalar floating point too. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("fpu");
    float a[4] __attribute__((aligned(16))) = { 2.0f, 5.0f, 3.0f, 8.0f };
    const float want[4] = { 4.0f, 25.0f, 9.0f, 64.0f };
    __asm__ __volatile__("movaps %0, %%xmm1\n\t"
                         "mulps %%xmm1, %%xmm1\n\t"
                         "movaps %%xmm1, %0"
                         : "+m"(a) : : "xmm1");
    for (int i = 0; i < 4; i++)
        if (a[i] != want[i])
            return SOLO5_EXIT_FAILURE;
    volatile float x = 1.5f, y = 5.0f;
    if (x * y != 7.5f)
        return SOLO5_EXIT_FAILURE;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
