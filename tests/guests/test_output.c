/* test_output: one large console write (72 lines, a little under 4 KiB). */
#include "testlib.h"

#define LINE "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-\n"
#define LINES8 LINE LINE LINE LINE LINE LINE LINE LINE
static const char text[] = LINES8 LINES8 LINES8 LINES8 LINES8 LINES8 LINES8 LINES8 LINES8;

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("output");
    solo5_console_write(text, sizeof text - 1);
    return SOLO5_EXIT_SUCCESS;
}
