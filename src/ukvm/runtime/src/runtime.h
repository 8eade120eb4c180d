/* runtime.h: what the parts of the ukvm runtime share; nothing here is exported. */
#ifndef UKVM_RUNTIME_H
#define UKVM_RUNTIME_H

#include <stdarg.h>
#include "solo5.h"
#include "mft_abi.h"
#include "hvt.h"

#define UKVM_VERSION_STRING "ukvm-0.1.0"

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
extern int log_level;

/* console.c: text is built in a struct out (bounded), then written with one PUTS */
struct out {
    char *buf;
    size_t len, cap;
};
void out_bytes(struct out *o, const char *s, size_t n);
#define OUT_LIT(o, lit) out_bytes((o), (lit), sizeof(lit) - 1)
void out_hex(struct out *o, uint64_t v);
void out_dec(struct out *o, uint64_t v);
void console_puts(const char *s, size_t n);
void log_printf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void abort_msg(const char *file, int line, const char *msg, void *cookie) __attribute__((noreturn));
#define PANIC(msg, cookie) abort_msg(__FILE__, __LINE__, (msg), (cookie))

/* halt.c */
void hvt_halt(int status, void *cookie) __attribute__((noreturn));

/* cpu.c */
void cpu_init(const struct hvt_boot_info *bi);
void cpu_init_idt(void);
void cpu_enter_user(void);
void cpu_set_fs_base(uint64_t base);
static inline uint64_t cpu_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* time.c */
void time_init(uint64_t tsc_freq);

/* ssp.c */
void ssp_init(void);

/* mft.c */
void mft_init(const struct mft *mft);
struct mft_entry *mft_lookup(const char *name, enum mft_type type, solo5_handle_t *handle);
struct mft_entry *mft_by_handle(solo5_handle_t handle, enum mft_type type);

/* net.c */
void net_init(const struct hvt_boot_info *bi);

/* string.c (local helpers; the application brings its own C library) */
void *rt_memcpy(void *dst, const void *src, size_t n);
int rt_strncmp(const char *a, const char *b, size_t n);
size_t rt_strlen(const char *s);

#endif
