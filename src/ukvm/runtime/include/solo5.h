/*
 * solo5.h: the Solo5 unikernel API as implemented by the ukvm runtime (hvt target).
 *
 * An application defines solo5_app_main() and uses only the calls below; the runtime
 * provides start-up, console, clocks, devices, TLS and exit. Facts of the API follow the
 * Solo5 v0.12 interface so that applications build unchanged.
 */
#ifndef SOLO5_H
#define SOLO5_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Results of calls that can fail. */
typedef enum {
    SOLO5_R_OK = 0,      /* success */
    SOLO5_R_AGAIN = 1,   /* nothing to do now; try later (net read) */
    SOLO5_R_EINVAL = 2,  /* bad argument or handle */
    SOLO5_R_EUNSPEC = 3  /* other failure */
} solo5_result_t;

typedef uint64_t solo5_time_t;        /* nanoseconds */
typedef uint64_t solo5_handle_t;      /* device handle (manifest index) */
typedef uint64_t solo5_handle_set_t;  /* bit (1 << handle) per device */
typedef uint64_t solo5_off_t;         /* byte offset on a block device */

#define SOLO5_EXIT_SUCCESS 0
#define SOLO5_EXIT_FAILURE 1
#define SOLO5_EXIT_ABORT 255          /* statuses >= 255 belong to the runtime */

#define SOLO5_NET_ALEN 6              /* MAC address length */
#define SOLO5_NET_HLEN 14             /* Ethernet header length */

/* What the application is given at start. Read-only. */
struct solo5_start_info {
    const char *cmdline;   /* command line, runtime options removed */
    uintptr_t heap_start;  /* one free read/write region, which also holds */
    size_t heap_size;      /* the initial stack at its top */
};

/* Provided by the application; its return value is the exit status. */
int solo5_app_main(const struct solo5_start_info *info);

void solo5_exit(int status) __attribute__((noreturn));
void solo5_abort(void) __attribute__((noreturn));

/* Thread-local storage (local-exec model; the thread pointer is the FS base). */
size_t solo5_tls_size(void);
uintptr_t solo5_tls_tp_offset(uintptr_t tls);
solo5_result_t solo5_tls_init(uintptr_t tls);
solo5_result_t solo5_set_tls_base(uintptr_t base);

/* Clocks. */
solo5_time_t solo5_clock_monotonic(void);
solo5_time_t solo5_clock_wall(void);

/* Sleep until `deadline` (monotonic) or until a network device has input; the devices
 * with input are reported in *ready_set when it is not NULL. */
void solo5_yield(solo5_time_t deadline, solo5_handle_set_t *ready_set);

/* Console output; best effort, never fails. */
void solo5_console_write(const char *buf, size_t size);

/* Network devices. */
struct solo5_net_info {
    uint8_t mac_address[SOLO5_NET_ALEN];
    size_t mtu;            /* not counting the Ethernet header */
};
solo5_result_t solo5_net_acquire(const char *name, solo5_handle_t *handle,
                                 struct solo5_net_info *info);
solo5_result_t solo5_net_write(solo5_handle_t handle, const uint8_t *buf, size_t size);
solo5_result_t solo5_net_read(solo5_handle_t handle, uint8_t *buf, size_t size,
                              size_t *read_size);

/* Block devices. */
struct solo5_block_info {
    solo5_off_t capacity;  /* bytes */
    solo5_off_t block_size;
};
solo5_result_t solo5_block_acquire(const char *name, solo5_handle_t *handle,
                                   struct solo5_block_info *info);
solo5_result_t solo5_block_write(solo5_handle_t handle, solo5_off_t offset,
                                 const uint8_t *buf, size_t size);
solo5_result_t solo5_block_read(solo5_handle_t handle, solo5_off_t offset,
                                uint8_t *buf, size_t size);

#endif
