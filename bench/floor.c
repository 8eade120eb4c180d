/*
 * floor.c: the physical floors ukvm's benchmarks are compared with, measured in C.
 *   floor start               create a VM and run one instruction (`out`) to an exit
 *   floor exits N [PAGES]     N `out` exits to user space, re-entering at once; prints ns/exit.
 *                             With PAGES, one byte in each of PAGES distinct 4 KiB pages is
 *                             written between exits (a tender's working set) and only the time
 *                             inside KVM_RUN is counted
 *   floor pwrite FILE BS MB   sequential pwrite of BS-byte requests, MB MiB in all, wrapping
 *                             around the file; prints MB/s
 *   floor pread FILE BS MB    the same with pread
 *   floor udpecho PORT N      answer N UDP datagrams on PORT (echo), then exit
 *   floor rss CMD ARGS...     run CMD and print its peak RSS in KiB (a small parent, so the
 *                             figure is not inflated by a large parent's pre-exec memory)
 * Written for the benchmarks only; it is not part of the product.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Real mode is enough for `out`: no page tables, no descriptor tables. */
static int vm_out_loop(long n, long pages)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    uint8_t *mem = mmap(0, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    /* out %al, $0x10 ; jmp back to it */
    static const uint8_t code[] = { 0xe6, 0x10, 0xeb, 0xfc };
    memcpy(mem + 0x1000, code, sizeof code);
    struct kvm_userspace_memory_region r = { 0, 0, 0, 0x10000, (uint64_t)(uintptr_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    struct kvm_run *run = mmap(0, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs s;
    ioctl(vcpu, KVM_GET_SREGS, &s);
    s.cs.base = 0;
    s.cs.selector = 0;
    ioctl(vcpu, KVM_SET_SREGS, &s);
    struct kvm_regs g = { .rip = 0x1000, .rflags = 2 };
    ioctl(vcpu, KVM_SET_REGS, &g);
    volatile uint8_t *work = pages ? mmap(0, pages << 12, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : 0;
    double inside = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        double a = pages ? now() : 0;
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
        if (pages) {
            inside += now() - a;
            for (long p = 0; p < pages; p++)
                work[p << 12] += 1;
        }
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "unexpected exit %d\n", run->exit_reason);
            exit(1);
        }
    }
    double t1 = now();
    if (n > 1)
        printf("%.1f\n", (pages ? inside : t1 - t0) * 1e9 / n);
    return 0;
}

static int file_io(int write_mode, const char *path, long bs, long mb)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        die(path);
    char *buf = aligned_alloc(4096, bs);
    memset(buf, 0x5a, bs);
    long total = mb << 20, size = lseek(fd, 0, SEEK_END);
    double t0 = now();
    for (long done = 0; done < total; done += bs) {
        long off = done % size;
        ssize_t n = write_mode ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
        if (n != bs)
            die("io");
    }
    double t1 = now();
    printf("%.1f\n", mb / (t1 - t0));
    return 0;
}

static int udp_echo(int port, long n)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    char buf[65536];
    for (long i = 0; i < n; i++) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t got = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (got < 0)
            die("recvfrom");
        sendto(s, buf, got, 0, (struct sockaddr *)&from, len);
    }
    return 0;
}

static int rss(char **argv)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0)
        die("wait4");
    printf("%ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "rss"))
        return rss(argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "start"))
        return vm_out_loop(1, 0);
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "exits"))
        return vm_out_loop(atol(argv[2]), argc == 4 ? atol(argv[3]) : 0);
    if (argc == 5 && (!strcmp(argv[1], "pwrite") || !strcmp(argv[1], "pread")))
        return file_io(argv[1][1] == 'w', argv[2], atol(argv[3]), atol(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "udpecho"))
        return udp_echo(atoi(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: floor start | exits N | pwrite|pread FILE BS MB | udpecho PORT N\n");
    return 2;
}
