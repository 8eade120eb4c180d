/* static_httpd.c: the runc baseline for the Kubernetes tests and bench: a static C program that
 * prints one line, then answers every HTTP request on port 80 with a short body; SIGTERM ends it
 * at once (as a container's PID 1 it would otherwise ignore the signal). */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
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
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
        perror("static_httpd");
        return 1;
    }
    printf("static_httpd: listening\n");
    fflush(stdout);
    static const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
                                "static httpd\n";
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        char buf[2048];
        ssize_t n = read(c, buf, sizeof buf);   /* one read: the tests' requests are small */
        if (n > 0)
            write(c, reply, sizeof reply - 1);
        close(c);
    }
}
