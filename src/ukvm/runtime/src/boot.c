/* boot.c: from the tender's entry state to solo5_app_main() (start-up order of solo5-api.md 11). */
#include "runtime.h"

extern char _stext[], _etext[], _erodata[], _end[];

#define PAGE_SIZE 4096UL
#define MIN_HEAP (512UL * 1024)

static struct solo5_start_info start_info;

static const char banner[] =
    " _   _ _  ____   ____  __\n"
    "| | | | |/ /\\ \\ / /  \\/  |\n"
    "| |_| | ' <  \\ V /| |\\/| |\n"
    " \\___/|_|\\_\\  \\_/ |_|  |_|\n";

static int is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* Consume leading --solo5:LEVEL options; returns the rest of the command line. */
static const char *parse_runtime_options(const char *p)
{
    static const struct { const char *name; int level; } opts[] = {
        { "quiet", LOG_ERROR }, { "error", LOG_ERROR }, { "warn", LOG_WARN },
        { "info", LOG_INFO }, { "debug", LOG_DEBUG },
    };
    for (;;) {
        while (is_space(*p))
            p++;
        if (rt_strncmp(p, "--solo5:", 8) != 0)
            return p;
        const char *word = p + 8;
        unsigned i;
        for (i = 0; i < sizeof opts / sizeof opts[0]; i++) {
            size_t n = rt_strlen(opts[i].name);
            if (rt_strncmp(word, opts[i].name, n) == 0 && (word[n] == '\0' || is_space(word[n])))
                break;
        }
        if (i == sizeof opts / sizeof opts[0])
            return p;
        log_level = opts[i].level;
        p = word + rt_strlen(opts[i].name);
    }
}

void ukvm_start(struct hvt_boot_info *bi) __attribute__((noreturn));
void ukvm_start(struct hvt_boot_info *bi)
{
    ssp_init();
    cpu_set_fs_base(0);   /* TLS use before solo5_set_tls_base() faults at once */
    cpu_init();

    start_info.cmdline = parse_runtime_options((const char *)bi->cmdline);
    if (log_level >= LOG_INFO) {
        console_puts(banner, sizeof banner - 1);
        log_printf(LOG_INFO, "Solo5: Bindings version %s\n", UKVM_VERSION_STRING);
    }

    uint64_t mem_size = bi->mem_size;
    uintptr_t heap_start = ((uintptr_t)_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    log_printf(LOG_INFO, "Solo5: Memory map: %lu MB addressable:\n", mem_size >> 20);
    log_printf(LOG_INFO, "Solo5:   reserved @ (0x0 - 0x%lx)\n", (uintptr_t)_stext - 1);
    log_printf(LOG_INFO, "Solo5:       text @ (0x%lx - 0x%lx)\n", (uintptr_t)_stext, (uintptr_t)_etext - 1);
    log_printf(LOG_INFO, "Solo5:     rodata @ (0x%lx - 0x%lx)\n", (uintptr_t)_etext, (uintptr_t)_erodata - 1);
    log_printf(LOG_INFO, "Solo5:       data @ (0x%lx - 0x%lx)\n", (uintptr_t)_erodata, (uintptr_t)_end - 1);
    log_printf(LOG_INFO, "Solo5:       heap >= 0x%lx < stack < 0x%lx\n", heap_start, mem_size);
    if (heap_start + MIN_HEAP > mem_size)
        PANIC("Not enough memory", 0);

    time_init(bi->cpu_cycle_freq);
    mft_init((const struct mft *)bi->mft);
    net_init(bi);
    start_info.heap_start = heap_start;
    start_info.heap_size = mem_size - heap_start;
    solo5_exit(solo5_app_main(&start_info));
}
