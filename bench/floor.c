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
 *   floor paths N             every way a long-mode guest reaches the VMM, at CPL3 and CPL0, N
 *                             times each, in 5 rounds: `out` through the TSS I/O bitmap, MMIO
 *                             to an address without memory (write, read), `out`/MMIO bound to
 *                             an ioeventfd, `hlt`, and a fault, `int` or `syscall` into a CPL0
 *                             handler that exits with `out` (and the same handlers without the
 *                             exit); prints `NAME CPL MIN_NS MEDIAN_NS` per iteration
 *   floor rss CMD ARGS...     run CMD and print its peak RSS in KiB (a small parent, so the
 *                             figure is not inflated by a large parent's pre-exec memory)
 * Written for the benchmarks only; it is not part of the product. Over 400 lines: one program,
 * one subcommand per floor, sharing its clock and error helpers.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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
/* --- floor paths: the exit paths of a long-mode guest ------------------------------------------
 * A 4 MiB guest in long mode with hvt-like page tables (user bit on), a GDT laid out for
 * syscall/sysret (0x08 kernel code, 0x10 kernel data, 0x23 user data, 0x2b user code, 0x30 TSS),
 * a TSS whose I/O bitmap opens ports 0x500-0x5ff and 0x600-0x603 (as hvt's hypercall ports are
 * opened to CPL3 guests), an IDT with CPL0 handlers, and LSTAR for `syscall`. GPA 8-10 MiB is
 * mapped by the page tables but has no memory slot: accesses there are MMIO. The guest runs
 *     mov ebx, N ; L: <path> ; dec ebx ; jnz L ; mov dx, 0x5ff ; out dx, eax
 * and the VMM re-enters at once after each exit. */
#define P_MEM (4 << 20)
#define P_GDT 0x1000
#define P_PML4 0x2000
#define P_TSS 0x8000
#define P_IOMAP 0x68
#define P_TSS_LIMIT (P_IOMAP + 8192)
#define P_IDT 0x7000
#define P_VECTORS 0x82
#define P_HANDLERS 0x20000
#define P_LSTAR 0x30000
#define P_CODE 0x10000
#define P_EXIT_PORT 0x501        /* the handlers' exit */
#define P_DONE_PORT 0x5ff
#define P_MMIO 0x800000
#define P_MMIO_EVENTFD 0x900000
#define P_KICK_PORT 0x600        /* bound to an eventfd */

struct probe { int kvm, vm, vcpu; struct kvm_run *run; uint8_t *mem; };

static void put(uint8_t *at, const uint8_t *code, size_t n) { memcpy(at, code, n); }

static void probe_open(struct probe *p)
{
    p->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (p->kvm < 0)
        die("/dev/kvm");
    p->vm = ioctl(p->kvm, KVM_CREATE_VM, 0);
    p->mem = mmap(0, P_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region r = { 0, 0, 0, P_MEM, (uint64_t)(uintptr_t)p->mem };
    if (ioctl(p->vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    uint64_t *pml4 = (uint64_t *)(p->mem + P_PML4), *pdpt = pml4 + 512, *pd = pml4 + 1024;
    pml4[0] = (P_PML4 + 0x1000) | 7;
    pdpt[0] = (P_PML4 + 0x2000) | 7;
    for (int i = 0; i < 5; i++)     /* 0-10 MiB in 2 MiB user pages; 4-10 MiB has no memory */
        pd[i] = ((uint64_t)i << 21) | 0x87;
    p->vcpu = ioctl(p->vm, KVM_CREATE_VCPU, 0);
    if (p->vcpu < 0)
        die("KVM_CREATE_VCPU");
    p->run = mmap(0, ioctl(p->kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, p->vcpu, 0);
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + 100 * sizeof cpuid->entries[0]);
    cpuid->nent = 100;
    if (ioctl(p->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
        ioctl(p->vcpu, KVM_SET_CPUID2, cpuid);
    free(cpuid);
    int efd = eventfd(0, EFD_NONBLOCK);
    struct kvm_ioeventfd pio = { .addr = P_KICK_PORT, .len = 4, .fd = efd, .flags = KVM_IOEVENTFD_FLAG_PIO };
    struct kvm_ioeventfd mio = { .addr = P_MMIO_EVENTFD, .len = 4, .fd = efd };
    if (ioctl(p->vm, KVM_IOEVENTFD, &pio) < 0 || ioctl(p->vm, KVM_IOEVENTFD, &mio) < 0)
        die("KVM_IOEVENTFD");

    /* Descriptor tables. */
    uint64_t *gdt = (uint64_t *)(p->mem + P_GDT);
    gdt[1] = 0x00af9a000000ffffULL;   /* 0x08 kernel code */
    gdt[2] = 0x00cf92000000ffffULL;   /* 0x10 kernel data */
    gdt[3] = 0x00cffa000000ffffULL;   /* 0x18 (sysret's base: user code 32, unused) */
    gdt[4] = 0x00cff2000000ffffULL;   /* 0x20 user data */
    gdt[5] = 0x00affa000000ffffULL;   /* 0x28 user code 64 */
    uint64_t tb = P_TSS, lim = P_TSS_LIMIT;
    gdt[6] = (lim & 0xffff) | ((tb & 0xffffff) << 16) | (0x89ULL << 40) | (((lim >> 16) & 0xf) << 48) |
             (((tb >> 24) & 0xff) << 56);
    gdt[7] = tb >> 32;
    uint8_t *tss = p->mem + P_TSS;
    *(uint64_t *)(tss + 4) = 0x90000;                 /* RSP0 */
    *(uint16_t *)(tss + 0x66) = P_IOMAP;
    memset(tss + P_IOMAP, 0xff, 8192 + 1);
    memset(tss + P_IOMAP + 0x500 / 8, 0, 0x100 / 8);  /* ports 0x500-0x5ff */
    tss[P_IOMAP + P_KICK_PORT / 8] &= 0xf0;           /* 0x600-0x603 */
}

/* The CPL0 side: handlers for #UD (6), #GP (13) and `int 0x80`/`int 0x81` (DPL 3 gates), and
 * the syscall entry. `exit_in_handler` makes each handler exit to the VMM (one `out` at CPL0)
 * before it returns to the guest. */
static void probe_handlers(struct probe *p, int exit_in_handler)
{
    static const uint8_t out_exit[] = { 0x66, 0xba, P_EXIT_PORT & 0xff, P_EXIT_PORT >> 8, 0xef };
    static const uint8_t ud_skip[] = { 0x48, 0x83, 0x04, 0x24, 0x02 };                /* add qword [rsp], 2 */
    static const uint8_t gp_skip[] = { 0x48, 0x83, 0xc4, 0x08, 0x48, 0xff, 0x04, 0x24 }; /* pop ec; inc [rsp] */
    static const uint8_t iretq[] = { 0x48, 0xcf }, sysretq[] = { 0x48, 0x0f, 0x07 };
    int vectors[] = { 6, 13, 0x80, 0x81 };
    for (unsigned i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        int v = vectors[i];
        uint64_t h = P_HANDLERS + v * 32, *g = (uint64_t *)(p->mem + P_IDT + v * 16);
        int dpl = v >= 0x80 ? 3 : 0;
        g[0] = (h & 0xffff) | (8ULL << 16) | ((0x8eULL | dpl << 5) << 40) | (((h >> 16) & 0xffff) << 48);
        g[1] = h >> 32;
        uint8_t *c = p->mem + h;
        if (v == 6)
            put(c, ud_skip, sizeof ud_skip), c += sizeof ud_skip;
        if (v == 13)
            put(c, gp_skip, sizeof gp_skip), c += sizeof gp_skip;
        if (exit_in_handler && v != 0x81)
            put(c, out_exit, sizeof out_exit), c += sizeof out_exit;
        put(c, iretq, sizeof iretq);
    }
    uint8_t *c = p->mem + P_LSTAR;
    if (exit_in_handler)
        put(c, out_exit, sizeof out_exit), c += sizeof out_exit;
    put(c, sysretq, sizeof sysretq);
}

static void probe_state(struct probe *p, int cpl)
{
    struct kvm_sregs s;
    ioctl(p->vcpu, KVM_GET_SREGS, &s);
    struct kvm_segment cs = { .limit = 0xffffffff, .selector = cpl ? 0x2b : 0x08, .type = 0xb, .present = 1,
                              .dpl = cpl, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment ds = { .limit = 0xffffffff, .selector = cpl ? 0x23 : 0x10, .type = 3, .present = 1,
                              .dpl = cpl, .db = 1, .s = 1, .g = 1 };
    struct kvm_segment tr = { .base = P_TSS, .limit = P_TSS_LIMIT, .selector = 0x30, .type = 0xb, .present = 1 };
    s.cs = cs;
    s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.tr = tr;
    s.gdt.base = P_GDT;
    s.gdt.limit = 8 * 8 - 1;
    s.idt.base = P_IDT;
    s.idt.limit = P_VECTORS * 16 - 1;
    s.cr0 = 0x80010033;
    s.cr3 = P_PML4;
    s.cr4 = 0x620;
    s.efer = 0x501;                                   /* LME, LMA, SCE */
    if (ioctl(p->vcpu, KVM_SET_SREGS, &s) < 0)
        die("KVM_SET_SREGS");
    struct { struct kvm_msrs h; struct kvm_msr_entry e[3]; } m = { .h.nmsrs = 3 };
    m.e[0] = (struct kvm_msr_entry){ .index = 0xc0000081, .data = (0x18ULL << 48) | (0x08ULL << 32) }; /* STAR */
    m.e[1] = (struct kvm_msr_entry){ .index = 0xc0000082, .data = P_LSTAR };                          /* LSTAR */
    m.e[2] = (struct kvm_msr_entry){ .index = 0xc0000084, .data = 0 };                                /* FMASK */
    if (ioctl(p->vcpu, KVM_SET_MSRS, &m) != 3)
        die("KVM_SET_MSRS");
}

static unsigned long long probe_rip(struct probe *p)
{
    struct kvm_regs g;
    ioctl(p->vcpu, KVM_GET_REGS, &g);
    return g.rip;
}

/* Runs the loop around `op` n times; ns per iteration, or -1 (with a message) on a surprise. */
static double probe_loop(struct probe *p, int cpl, const uint8_t *op, int len, long n)
{
    uint8_t *c = p->mem + P_CODE;
    int k = 0;
    c[k++] = 0xbb;                                    /* mov ebx, n */
    *(uint32_t *)(c + k) = (uint32_t)n;
    k += 4;
    int top = k;
    memcpy(c + k, op, len);
    k += len;
    c[k++] = 0xff, c[k++] = 0xcb;                     /* dec ebx */
    c[k++] = 0x75, c[k] = (uint8_t)(top - (k + 1)), k++;  /* jnz top */
    static const uint8_t done[] = { 0x66, 0xba, P_DONE_PORT & 0xff, P_DONE_PORT >> 8, 0xef };
    memcpy(c + k, done, sizeof done);
    probe_state(p, cpl);
    struct kvm_regs g = { .rip = P_CODE, .rflags = 2, .rsp = 0x80000 };
    ioctl(p->vcpu, KVM_SET_REGS, &g);
    double t0 = now();
    for (;;) {
        if (ioctl(p->vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
        struct kvm_run *r = p->run;
        if (r->exit_reason == KVM_EXIT_IO && r->io.port == P_DONE_PORT)
            break;
        if ((r->exit_reason == KVM_EXIT_IO && (r->io.port & ~0xff) == 0x500) || r->exit_reason == KVM_EXIT_MMIO ||
            r->exit_reason == KVM_EXIT_HLT)
            continue;
        fprintf(stderr, "paths: unexpected exit %u (port %#x, suberror %u, rip %#llx)\n", r->exit_reason,
                r->exit_reason == KVM_EXIT_IO ? r->io.port : 0,
                r->exit_reason == KVM_EXIT_INTERNAL_ERROR ? r->internal.suberror : 0, probe_rip(p));
        return -1;
    }
    return (now() - t0) * 1e9 / n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int exit_paths(long n)
{
    static const uint8_t nop[] = { 0x90 };
    static const uint8_t out_io[] = { 0x66, 0xba, 0x00, 0x05, 0xef };          /* mov dx,0x500; out dx,eax */
    static const uint8_t out_kick[] = { 0x66, 0xba, 0x00, 0x06, 0xef };        /* the eventfd port */
    static const uint8_t mmio_w[] = { 0xc7, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00 };
    static const uint8_t mmio_r[] = { 0x8b, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00 };  /* mov eax,[0x800000] */
    static const uint8_t mmio_kick[] = { 0xc7, 0x04, 0x25, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00 };
    static const uint8_t hlt[] = { 0xf4 }, ud2[] = { 0x0f, 0x0b }, int80[] = { 0xcd, 0x80 }, int81[] = { 0xcd, 0x81 };
    static const uint8_t syscall[] = { 0x0f, 0x05 };
    struct { const char *name; const uint8_t *op; int len, cpl, handler_exits, loop_scale; } t[] = {
        { "loop_alone", nop, 1, 3, 0, 100 },
        { "loop_alone", nop, 1, 0, 0, 1 },
        { "out_bitmap", out_io, 5, 3, 0, 1 },
        { "out", out_io, 5, 0, 0, 1 },
        { "mmio_write", mmio_w, 11, 3, 0, 1 },
        { "mmio_write", mmio_w, 11, 0, 0, 1 },
        { "mmio_read", mmio_r, 7, 3, 0, 1 },
        { "mmio_read", mmio_r, 7, 0, 0, 1 },
        { "out_ioeventfd", out_kick, 5, 3, 0, 1 },
        { "out_ioeventfd", out_kick, 5, 0, 0, 1 },
        { "mmio_ioeventfd", mmio_kick, 11, 3, 0, 1 },
        { "mmio_ioeventfd", mmio_kick, 11, 0, 0, 1 },
        { "hlt", hlt, 1, 0, 0, 1 },
        { "hlt_gp_handler_exit", hlt, 1, 3, 1, 1 },
        { "ud2_handler_exit", ud2, 2, 3, 1, 1 },
        { "int80_handler_exit", int80, 2, 3, 1, 1 },
        { "syscall_handler_exit", syscall, 2, 3, 1, 1 },
        { "hlt_gp_handler", hlt, 1, 3, 0, 1 },
        { "int81_handler", int81, 2, 3, 0, 1 },
        { "syscall_handler", syscall, 2, 3, 0, 1 },
    };
    struct probe p;
    probe_open(&p);
    /* Rounds over all paths, so that load on a shared host spreads over them alike; the minimum
     * is the path's own cost (interference only adds), the median what a loaded host gives. */
    enum { N_PATHS = sizeof t / sizeof t[0], ROUNDS = 5 };
    double runs[N_PATHS][ROUNDS];
    int failed[N_PATHS] = { 0 };
    for (int r = 0; r < ROUNDS; r++)
        for (unsigned i = 0; i < N_PATHS; i++) {
            if (failed[i])
                continue;
            probe_handlers(&p, t[i].handler_exits);
            runs[i][r] = probe_loop(&p, t[i].cpl, t[i].op, t[i].len, n * t[i].loop_scale);
            failed[i] = runs[i][r] < 0;   /* this host cannot take the path: said below */
        }
    for (unsigned i = 0; i < N_PATHS; i++) {
        if (failed[i]) {
            printf("%s %d unsupported unsupported\n", t[i].name, t[i].cpl);
            continue;
        }
        qsort(runs[i], ROUNDS, sizeof runs[i][0], cmp_double);
        printf("%s %d %.1f %.1f\n", t[i].name, t[i].cpl, runs[i][0], runs[i][ROUNDS / 2]);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "paths"))
        return exit_paths(atol(argv[2]));
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
    fprintf(stderr, "usage: floor start | exits N | paths N | pwrite|pread FILE BS MB | udpecho PORT N\n");
    return 2;
}
