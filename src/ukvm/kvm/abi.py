"""kvm/abi.py: Linux KVM ABI for x86_64: structs named as in linux/kvm.h, ioctl numbers, constants.

Every ioctl number is computed here from its struct size; unit tests pin the results.
"""
import ctypes
import struct

# ioctl encoding (asm-generic/ioctl.h)
_IOC_WRITE = 1
_IOC_READ = 2
KVMIO = 0xAE


def _IOC(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _IO(nr: int) -> int:
    return _IOC(0, nr, 0)


def _IOR(nr: int, ctype) -> int:
    return _IOC(_IOC_READ, nr, ctypes.sizeof(ctype))


def _IOW(nr: int, ctype) -> int:
    return _IOC(_IOC_WRITE, nr, ctypes.sizeof(ctype))


def _IOWR(nr: int, ctype) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(ctype))


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("guest_phys_addr", ctypes.c_uint64), ("memory_size", ctypes.c_uint64),
                ("userspace_addr", ctypes.c_uint64)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32),
                ("edx", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """Header only; the entries follow it in the same buffer (see cpuid2_buffer)."""
    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


_cpuid2_types: dict = {}


def cpuid2_type(nent: int):
    """A kvm_cpuid2 with room for `nent` entries (one class per size, made once)."""
    if nent not in _cpuid2_types:
        _cpuid2_types[nent] = type(f"kvm_cpuid2_{nent}", (ctypes.Structure,), {
            "_fields_": [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32),
                         ("entries", kvm_cpuid_entry2 * nent)]})
    return _cpuid2_types[nent]


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [("datamatch", ctypes.c_uint64), ("addr", ctypes.c_uint64), ("len", ctypes.c_uint32),
                ("fd", ctypes.c_int32), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 36)]


class kvm_xcr(ctypes.Structure):
    _fields_ = [("xcr", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class kvm_xcrs(ctypes.Structure):
    _fields_ = [("nr_xcrs", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("xcrs", kvm_xcr * 16),
                ("padding", ctypes.c_uint64 * 16)]


class kvm_fpu(ctypes.Structure):
    _fields_ = [("fpr", ctypes.c_uint8 * 128), ("fcw", ctypes.c_uint16), ("fsw", ctypes.c_uint16),
                ("ftwx", ctypes.c_uint8), ("pad1", ctypes.c_uint8), ("last_opcode", ctypes.c_uint16),
                ("last_ip", ctypes.c_uint64), ("last_dp", ctypes.c_uint64),
                ("xmm", ctypes.c_uint8 * 256), ("mxcsr", ctypes.c_uint32), ("pad2", ctypes.c_uint32)]


class kvm_xsave(ctypes.Structure):
    _fields_ = [("region", ctypes.c_uint32 * 1024)]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", ctypes.c_uint64)]


class kvm_msrs(ctypes.Structure):     # the header; msrs_type(n) appends n entries
    _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


_msrs_types: dict = {}


def msrs_type(n: int) -> type:
    """A kvm_msrs with room for `n` entries (one class per size, made once)."""
    if n not in _msrs_types:
        _msrs_types[n] = type(f"kvm_msrs_{n}", (ctypes.Structure,), {
            "_fields_": [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("entries", kvm_msr_entry * n)]})
    return _msrs_types[n]


class kvm_dirty_log(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("dirty_bitmap", ctypes.c_uint64)]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("args", ctypes.c_uint64 * 4),
                ("pad", ctypes.c_uint8 * 64)]


class kvm_guest_debug(ctypes.Structure):
    _fields_ = [("control", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("debugreg", ctypes.c_uint64 * 8)]


# /dev/kvm ioctls
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, kvm_cpuid2)
# VM ioctls
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, kvm_userspace_memory_region)
KVM_IOEVENTFD = _IOW(0x79, kvm_ioeventfd)
KVM_GET_DIRTY_LOG = _IOW(0x42, kvm_dirty_log)
KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_ENABLE_CAP = _IOW(0xA3, kvm_enable_cap)
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1
# vCPU ioctls
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, kvm_regs)
KVM_SET_REGS = _IOW(0x82, kvm_regs)
KVM_GET_SREGS = _IOR(0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(0x84, kvm_sregs)
KVM_GET_FPU = _IOR(0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(0x8D, kvm_fpu)
KVM_GET_MSRS = _IOWR(0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(0x89, kvm_msrs)
KVM_GET_XSAVE = _IOR(0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(0xA6, kvm_xcrs)
KVM_SET_GUEST_DEBUG = _IOW(0x9B, kvm_guest_debug)
KVM_SET_SIGNAL_MASK = _IOC(_IOC_WRITE, 0x8B, 4)   # struct kvm_signal_mask: __u32 len; then the sigset
KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_HW_BP = 0x20000
KVM_SET_CPUID2 = _IOW(0x90, kvm_cpuid2)
KVM_GET_TSC_KHZ = _IO(0xA3)
KVM_SET_XCRS = _IOW(0xA7, kvm_xcrs)

KVM_API_VERSION = 12
KVM_CAP_USER_MEMORY = 3
KVM_CAP_IOEVENTFD = 36
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_IOEVENTFD_FLAG_PIO = 2

# kvm_run exit reasons
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1

# kvm_run layout: fields read in place from the mmap'ed run area
KVM_RUN_EXIT_REASON = struct.Struct("<I")          # @8
KVM_RUN_EXIT_REASON_OFFSET = 8
KVM_RUN_IMMEDIATE_EXIT_OFFSET = 1                   # u8: KVM_RUN returns EINTR at once when set
KVM_RUN_EXIT_OFFSET = 32                            # the per-reason union
KVM_RUN_IO = struct.Struct("<BBHIQ")                # direction, size, port, count, data_offset
KVM_RUN_MMIO = struct.Struct("<Q8sIB")              # phys_addr, data, len, is_write
KVM_RUN_FAIL_ENTRY = struct.Struct("<Q")            # hardware_entry_failure_reason
KVM_RUN_INTERNAL = struct.Struct("<I")              # suberror
KVM_RUN_DEBUG = struct.Struct("<IIQQQ")             # exception, pad, pc, dr6, dr7
