/* test_vector: code the compiler vectorises (built with -O3, and with -mavx2 by the tests):
 * a copy loop and a float multiply-add over arrays, checked element by element. */
#include "testlib.h"

#define N 4096
static float a[N], b[N], c[N];
static uint8_t src[N], dst[N];

static void __attribute__((noinline)) copy(uint8_t *d, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = s[i];
}

static void __attribute__((noinline)) madd(float *r, const float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        r[i] = x[i] * y[i] + 1.0f;
}

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    for (int i = 0; i < N; i++) {
        src[i] = (uint8_t)(i * 7);
        a[i] = (float)i;
        b[i] = 0.5f;
    }
    copy(dst, src, N);
    madd(c, a, b, N);
    for (int i = 0; i < N; i++)
        if (dst[i] != src[i] || c[i] != (float)i * 0.5f + 1.0f)
            return SOLO5_EXIT_FAILURE;
    puts("SUCCESS\n");
    return SOLO5_EXIT_SUCCESS;
}
