"""hvt_abi.py: the hvt guest/tender contract (hvt-abi.md sections 5-8): layout, hypercalls, boot info.

Hypercall argument structs are struct.Struct objects bound once; fields marked IN are read from
guest memory, OUT fields are written back at their offset.
"""
import struct

HVT_ABI_VERSION = 2

# Hypercalls: a 32-bit OUT of the argument GPA to port HVT_HYPERCALL_PIO_BASE + nr.
HVT_HYPERCALL_PIO_BASE = 0x500
HVT_HYPERCALL_WALLTIME = 1
HVT_HYPERCALL_PUTS = 2
HVT_HYPERCALL_POLL = 3
HVT_HYPERCALL_BLOCK_WRITE = 4
HVT_HYPERCALL_BLOCK_READ = 5
HVT_HYPERCALL_NET_WRITE = 6
HVT_HYPERCALL_NET_READ = 7
HVT_HYPERCALL_HALT = 8
HVT_HYPERCALL_MAX = 9
HYPERCALL_NAMES = {HVT_HYPERCALL_WALLTIME: "walltime", HVT_HYPERCALL_PUTS: "puts", HVT_HYPERCALL_POLL: "poll",
                   HVT_HYPERCALL_BLOCK_WRITE: "block_write", HVT_HYPERCALL_BLOCK_READ: "block_read",
                   HVT_HYPERCALL_NET_WRITE: "net_write", HVT_HYPERCALL_NET_READ: "net_read",
                   HVT_HYPERCALL_HALT: "halt"}
HVT_HALT_COOKIE_MAX = 512

SOLO5_R_OK = 0
SOLO5_R_AGAIN = 1
SOLO5_R_EINVAL = 2
SOLO5_R_EUNSPEC = 3

# Argument structures (IN/OUT as in hvt-abi.md section 8).
hvt_hc_walltime = struct.Struct("<Q")            # OUT nsecs
hvt_hc_puts = struct.Struct("<QQ")               # IN data, IN len
hvt_hc_poll = struct.Struct("<QQi4x")            # IN timeout_nsecs, OUT ready_set, OUT ret
HVT_POLL_OUT = struct.Struct("<Qi")              # ready_set, ret at offset 8
hvt_hc_block_io = struct.Struct("<QQQQi4x")      # IN handle, offset, data, len; OUT ret
HVT_BLOCK_RET_OFFSET = 32
hvt_hc_net_io = struct.Struct("<QQQi4x")         # IN handle, data, len(IN/OUT); OUT ret
HVT_NET_LEN_RET = struct.Struct("<Qi")           # len, ret at offset 16
HVT_NET_RET_OFFSET = 24
hvt_hc_halt = struct.Struct("<Qi4x")             # IN cookie, IN exit_status
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

# Guest physical memory layout (section 5.2).
HVT_GDT_BASE = 0x1000
HVT_PML4_BASE = 0x2000
HVT_PDPT_BASE = 0x3000
HVT_PD_BASE = 0x4000
HVT_PT0_BASE = 0x8000
HVT_BOOT_INFO_BASE = 0x10000
HVT_GUEST_MIN_BASE = 0x100000
HVT_CMDLINE_SIZE = 8192
MEM_GRANULE = 2 << 20              # memory sizes are multiples of 2 MiB
MEM_MAX = 4 << 30
MEM_DEFAULT = 512 << 20

# Boot info (section 7.1): mem_size, kernel_end, cpu_cycle_freq, cmdline, mft,
# host_features, guest_features, net_ring.
hvt_boot_info = struct.Struct("<QQQQQIIQ")
assert hvt_boot_info.size == 56
HVT_FEATURE_RING_IO = 1
# ukvm extension (Solo5 v0.12.1 defines bit 0 only): page tables are user-accessible and
# CR4.FSGSBASE is set, so the guest may run at CPL3 (docs/cpl3.md). Set only for guests that ask
# with a `ukvm` MODE note; upstream guests never see it.
UKVM_FEATURE_CPL3 = 1 << 31
# ukvm extension under --gdb: the runtime reports #DB and int3 from CPL3 at UKVM_DEBUG_PORT (with
# the address of the registers it saved) instead of treating them as fatal. Only for runtimes
# whose MODE note has bit 1 (machine/elf.py UKVM_MODE_DEBUG).
UKVM_FEATURE_DEBUG = 1 << 30
UKVM_DEBUG_PORT = 0x5FD

# Network ring (section 9): sizes needed by memory sizing even without the ring thread.
HVT_RING_STRUCT_SIZE = 49280
HVT_RING_AREA = MEM_GRANULE
