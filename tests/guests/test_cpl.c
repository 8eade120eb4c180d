/* test_cpl: reports the privilege level the application runs at (CS.RPL); with "priv" it then
 * executes `cli`, which is privileged at CPL3 (#GP, abort) and harmless at CPL0. */
#include "testlib.h"

int solo5_app_main(const struct solo5_start_info *si)
{
    uint16_t cs;
    __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
    puts((cs & 3) == 3 ? "CPL 3\n" : (cs & 3) == 0 ? "CPL 0\n" : "CPL ?\n");
    if (!t_strcmp(si->cmdline, "priv")) {
        __asm__ __volatile__("cli");
        puts("privileged instruction allowed\n");
    }
    return SOLO5_EXIT_SUCCESS;
}
