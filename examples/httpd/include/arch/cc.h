/* arch/cc.h: lwIP's platform port for a freestanding x86-64 solo5 guest. */
#ifndef UKVM_ARCH_CC_H
#define UKVM_ARCH_CC_H

#include <stddef.h>
#include <stdint.h>

#define LWIP_NO_INTTYPES_H 1
#define LWIP_NO_LIMITS_H   1
#define LWIP_NO_CTYPE_H    1
#define LWIP_PROVIDE_ERRNO 1
#define BYTE_ORDER LITTLE_ENDIAN

#define X8_F  "02x"
#define U16_F "hu"
#define S16_F "hd"
#define X16_F "hx"
#define U32_F "u"
#define S32_F "d"
#define X32_F "x"
#define SZT_F "lu"
#define INT_MAX 0x7fffffff
#define SSIZE_MAX 0x7fffffffffffffffL
#define LWIP_NO_UNISTD_H 1

typedef long ssize_t;

void ukvm_lwip_assert(const char *message, const char *file, int line);
#define LWIP_PLATFORM_DIAG(x) do { } while (0)
#define LWIP_PLATFORM_ASSERT(x) ukvm_lwip_assert((x), __FILE__, __LINE__)

#endif
