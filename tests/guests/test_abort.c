/* test_abort: solo5_abort() ends the guest with status 255. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    (void)si;
    header("abort");
    solo5_abort();
}
