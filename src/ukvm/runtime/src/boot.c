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

/* Banner and memory map, built without a format parser and written with one PUTS: where CPL0
 * code is emulated (kvm_pvm) every instruction of start-up counts. */
static void print_banner(uint64_t mem_size, uintptr_t heap_start)
{
    char buf[640];
    struct out o = { buf, 0, sizeof buf };
    OUT_LIT(&o, banner);
    OUT_LIT(&o, "Solo5: Bindings version " UKVM_VERSION_STRING "\nSolo5: Memory map: ");
    out_dec(&o, mem_size >> 20);
    OUT_LIT(&o, " MB addressable:\nSolo5:   reserved @ (0x0 - 0x");
    out_hex(&o, (uintptr_t)_stext - 1);
    OUT_LIT(&o, ")\nSolo5:       text @ (0x");
    out_hex(&o, (uintptr_t)_stext);
    OUT_LIT(&o, " - 0x");
    out_hex(&o, (uintptr_t)_etext - 1);
    OUT_LIT(&o, ")\nSolo5:     rodata @ (0x");
    out_hex(&o, (uintptr_t)_etext);
    OUT_LIT(&o, " - 0x");
    out_hex(&o, (uintptr_t)_erodata - 1);
    OUT_LIT(&o, ")\nSolo5:       data @ (0x");
    out_hex(&o, (uintptr_t)_erodata);
    OUT_LIT(&o, " - 0x");
    out_hex(&o, (uintptr_t)_end - 1);
    OUT_LIT(&o, ")\nSolo5:       heap >= 0x");
    out_hex(&o, heap_start);
    OUT_LIT(&o, " < stack < 0x");
    out_hex(&o, mem_size);
    OUT_LIT(&o, "\n");
    console_puts(buf, o.len < o.cap ? o.len : o.cap);
}

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
    cpu_init(bi);
    if (bi->host_features & UKVM_FEATURE_CPL3)
        cpu_enter_user();   /* from here on everything runs at CPL3 */
    cpu_init_idt();         /* natively at CPL3 where the drop happened (cpu.c) */

    start_info.cmdline = parse_runtime_options((const char *)bi->cmdline);
    uint64_t mem_size = bi->mem_size;
    uintptr_t heap_start = ((uintptr_t)_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    if (log_level >= LOG_INFO)
        print_banner(mem_size, heap_start);
    if (heap_start + MIN_HEAP > mem_size)
        PANIC("Not enough memory", 0);

    time_init(bi->cpu_cycle_freq);
    mft_init((const struct mft *)bi->mft);
    net_init(bi);
    start_info.heap_start = heap_start;
    start_info.heap_size = mem_size - heap_start;
    solo5_exit(solo5_app_main(&start_info));
}
