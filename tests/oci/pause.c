/* pause.c: the pod sandbox's process for the CRI tests (what registry.k8s.io/pause does):
 * sleep until SIGTERM or SIGINT, then exit 0. Built static, into an image by the tests. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int sig)
{
    (void)sig;
    _exit(0);
}

int main(void)
{
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;)
        pause();
}
