/* console.c: console output, log lines, exit, abort and halt. */
#include "runtime.h"

#define LOG_BUF_SIZE 320

int log_level = LOG_INFO;

void console_puts(const char *s, size_t n)
{
    struct hvt_hc_puts arg = { .data = (uint64_t)(uintptr_t)s, .len = n };
    hvt_hypercall(HVT_HYPERCALL_PUTS, &arg);
}

void solo5_console_write(const char *buf, size_t size)
{
    console_puts(buf, size);
}

void hvt_halt(int status, void *cookie)
{
    struct hvt_hc_halt arg = { .cookie = (uint64_t)(uintptr_t)cookie, .exit_status = status };
    hvt_hypercall(HVT_HYPERCALL_HALT, &arg);
    for (;;)
        ;  /* the tender never resumes a halted guest */
}

static void out_char(struct out *o, char c)
{
    if (o->len < o->cap)
        o->buf[o->len] = c;
    o->len++;
}

static void out_str(struct out *o, const char *s)
{
    if (!s)
        s = "(null)";
    while (*s)
        out_char(o, *s++);
}

void out_bytes(struct out *o, const char *s, size_t n)
{
    if (o->len < o->cap)
        rt_memcpy(o->buf + o->len, s, n < o->cap - o->len ? n : o->cap - o->len);
    o->len += n;
}

void out_hex(struct out *o, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    int n = 16;
    do {
        tmp[--n] = digits[v & 15];
        v >>= 4;
    } while (v);
    out_bytes(o, tmp + n, (size_t)(16 - n));
}

void out_dec(struct out *o, uint64_t v)
{
    char tmp[20];
    int n = 20;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_bytes(o, tmp + n, (size_t)(20 - n));
}

static void out_num(struct out *o, uint64_t v, unsigned base, int negative)
{
    if (negative)
        out_char(o, '-');
    if (base == 16)
        out_hex(o, v);
    else
        out_dec(o, v);
}

/* A small printf: %s %c %d %u %x %p %%, with l/ll/z length modifiers. */
static void format(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            out_char(o, *fmt);
            continue;
        }
        int longs = 0;
        for (fmt++; *fmt == 'l' || *fmt == 'z'; fmt++)
            longs++;
        switch (*fmt) {
        case 's': out_str(o, va_arg(ap, const char *)); break;
        case 'c': out_char(o, (char)va_arg(ap, int)); break;
        case 'd': {
            int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
            out_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0);
            break;
        }
        case 'u': out_num(o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0); break;
        case 'x': out_num(o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 0); break;
        case 'p': out_str(o, "0x"); out_num(o, (uintptr_t)va_arg(ap, void *), 16, 0); break;
        case '%': out_char(o, '%'); break;
        case '\0': return;
        default: out_char(o, '%'); out_char(o, *fmt); break;
        }
    }
}

void log_printf(int level, const char *fmt, ...)
{
    static const char cut[] = "(truncated)\n";
    char buf[LOG_BUF_SIZE];
    struct out o = { buf, 0, sizeof buf };
    va_list ap;

    if (level > log_level)
        return;
    va_start(ap, fmt);
    format(&o, fmt, ap);
    va_end(ap);
    if (o.len > sizeof buf) {
        rt_memcpy(buf + sizeof buf - sizeof cut + 1, cut, sizeof cut - 1);
        o.len = sizeof buf;
    }
    console_puts(buf, o.len);
}

void abort_msg(const char *file, int line, const char *msg, void *cookie)
{
    char buf[LOG_BUF_SIZE];
    struct out o = { buf, 0, sizeof buf - 1 };
    const char *base = file;
    for (const char *p = file; *p; p++)
        if (*p == '/')
            base = p + 1;
    out_str(&o, "Solo5: ABORT: ");
    out_str(&o, base);
    out_char(&o, ':');
    out_num(&o, (unsigned)line, 10, 0);
    out_str(&o, ": ");
    out_str(&o, msg);
    if (o.len > o.cap)
        o.len = o.cap;
    buf[o.len++] = '\n';
    console_puts(buf, o.len);   /* ABORT is not a log line: printed even when quiet */
    hvt_halt(SOLO5_EXIT_ABORT, cookie);
}

void solo5_exit(int status)
{
    log_printf(LOG_INFO, "Solo5: solo5_exit(%d) called\n", status);
    hvt_halt(status, 0);
}

void solo5_abort(void)
{
    log_printf(LOG_INFO, "Solo5: solo5_abort() called\n");
    hvt_halt(SOLO5_EXIT_ABORT, 0);
}
