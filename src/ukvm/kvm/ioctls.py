"""kvm/ioctls.py: /dev/kvm, VM and vCPU file descriptors; the only caller of fcntl.ioctl.

Errors become KvmError with the upstream wording `KVM: ioctl (NAME) failed: <errno text>`.
"""
import ctypes
import errno
import fcntl
import mmap
import os
import struct

from ukvm.errors import KvmError
from ukvm.kvm import abi


_libc_ioctl = ctypes.CDLL(None, use_errno=True)["ioctl"]
_libc_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc_ioctl.restype = ctypes.c_int


def _ioctl(fd: int, request: int, arg, name: str):
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise KvmError(f"KVM: ioctl ({name}) failed: {os.strerror(e.errno)}") from None


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = "/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"Could not open: {path}: {os.strerror(e.errno)}") from None
        try:
            version = _ioctl(self.fd, abi.KVM_GET_API_VERSION, 0, "GET_API_VERSION")
            if version != abi.KVM_API_VERSION:
                raise KvmError(f"KVM: API version is {version}, ukvm requires version {abi.KVM_API_VERSION}")
        except KvmError:
            self.close()
            raise

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap, "CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        return _ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self):
        """The host's supported CPUID list; the buffer grows until KVM stops saying E2BIG."""
        nent = 128
        while True:
            buf = abi.cpuid2_type(nent)()
            buf.nent = nent
            try:
                fcntl.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf)
                return buf
            except OSError as e:
                if e.errno != errno.E2BIG or nent >= 4096:
                    raise KvmError(f"KVM: ioctl (GET_SUPPORTED_CPUID) failed: {os.strerror(e.errno)}") from None
                nent *= 2

    def create_vm(self) -> "VmFd":
        return VmFd(_ioctl(self.fd, abi.KVM_CREATE_VM, 0, "CREATE_VM"))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VmFd:
    def __init__(self, fd: int):
        self.fd = fd

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int,
                               log_dirty: bool = False) -> None:
        region = abi.kvm_userspace_memory_region(
            slot=slot, flags=abi.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0, guest_phys_addr=gpa,
            memory_size=size, userspace_addr=host_addr)
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, "SET_USER_MEMORY_REGION")

    def enable_cap(self, cap: int, arg0: int) -> None:
        args = abi.kvm_enable_cap(cap=cap)
        args.args[0] = arg0
        _ioctl(self.fd, abi.KVM_ENABLE_CAP, args, "ENABLE_CAP")

    def get_dirty_log(self, slot: int, bitmap) -> None:
        """Fill `bitmap` (a ctypes buffer, one bit per page) with the pages the guest wrote since
        the last call, and start counting afresh; with manual protection enabled (enable_cap),
        since logging began, and nothing is protected again."""
        arg = abi.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        _ioctl(self.fd, abi.KVM_GET_DIRTY_LOG, arg, "GET_DIRTY_LOG")

    def ioeventfd(self, port: int, length: int, efd: int) -> None:
        arg = abi.kvm_ioeventfd(addr=port, len=length, fd=efd, flags=abi.KVM_IOEVENTFD_FLAG_PIO)
        _ioctl(self.fd, abi.KVM_IOEVENTFD, arg, "IOEVENTFD")

    def create_vcpu(self, kvm: Kvm, vcpu_id: int = 0) -> "VcpuFd":
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, vcpu_id, "CREATE_VCPU")
        try:
            return VcpuFd(fd, kvm.vcpu_mmap_size())
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VcpuFd:
    """A vCPU and its shared kvm_run area (`run`), which the exit loop reads in place."""

    def __init__(self, fd: int, mmap_size: int):
        self.fd = fd
        try:
            self.run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise KvmError(f"KVM: mmap of vcpu run area failed: {os.strerror(e.errno)}") from None

    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        _ioctl(self.fd, abi.KVM_GET_REGS, regs, "GET_REGS")
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, regs, "SET_REGS")

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        _ioctl(self.fd, abi.KVM_GET_SREGS, sregs, "GET_SREGS")
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs, "SET_SREGS")

    def get_fpu(self) -> abi.kvm_fpu:
        fpu = abi.kvm_fpu()
        _ioctl(self.fd, abi.KVM_GET_FPU, fpu, "GET_FPU")
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        _ioctl(self.fd, abi.KVM_SET_FPU, fpu, "SET_FPU")

    def get_xsave(self) -> abi.kvm_xsave:
        xsave = abi.kvm_xsave()
        _ioctl(self.fd, abi.KVM_GET_XSAVE, xsave, "GET_XSAVE")
        return xsave

    def set_xsave(self, xsave: abi.kvm_xsave) -> None:
        _ioctl(self.fd, abi.KVM_SET_XSAVE, xsave, "SET_XSAVE")

    def get_xcrs(self) -> abi.kvm_xcrs:
        xcrs = abi.kvm_xcrs()
        _ioctl(self.fd, abi.KVM_GET_XCRS, xcrs, "GET_XCRS")
        return xcrs

    def set_xcrs(self, xcrs: abi.kvm_xcrs) -> None:
        _ioctl(self.fd, abi.KVM_SET_XCRS, xcrs, "SET_XCRS")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """The MSRs KVM could read, in order, up to the first it refused."""
        msrs = abi.msrs_type(len(indices))(nmsrs=len(indices))
        for entry, index in zip(msrs.entries, indices):
            entry.index = index
        got = _ioctl(self.fd, abi.KVM_GET_MSRS, msrs, "GET_MSRS")
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(got)}

    def set_msrs(self, values: dict[int, int]) -> None:
        msrs = abi.msrs_type(len(values))(nmsrs=len(values))
        for entry, (index, data) in zip(msrs.entries, values.items()):
            entry.index, entry.data = index, data
        got = _ioctl(self.fd, abi.KVM_SET_MSRS, msrs, "SET_MSRS")
        if got != len(values):
            raise KvmError(f"KVM: ioctl (SET_MSRS) refused MSR {msrs.entries[got].index:#x}")

    def set_guest_debug(self, control: int, debugreg=(0,) * 8) -> None:
        dbg = abi.kvm_guest_debug(control=control)
        dbg.debugreg[:] = list(debugreg)
        _ioctl(self.fd, abi.KVM_SET_GUEST_DEBUG, dbg, "SET_GUEST_DEBUG")

    def set_signal_mask(self, blocked: int) -> None:
        """The signals blocked while this vCPU is inside KVM_RUN (bit n-1 for signal n)."""
        _ioctl(self.fd, abi.KVM_SET_SIGNAL_MASK, struct.pack("<IQ", 8, blocked), "SET_SIGNAL_MASK")

    def set_cpuid2(self, cpuid) -> None:
        _ioctl(self.fd, abi.KVM_SET_CPUID2, cpuid, "SET_CPUID2")

    def set_xcr0(self, value: int) -> None:
        xcrs = abi.kvm_xcrs(nr_xcrs=1)
        xcrs.xcrs[0].xcr = 0
        xcrs.xcrs[0].value = value
        _ioctl(self.fd, abi.KVM_SET_XCRS, xcrs, "SET_XCRS")

    def tsc_khz(self) -> int:
        try:
            return fcntl.ioctl(self.fd, abi.KVM_GET_TSC_KHZ, 0)
        except OSError as e:
            if e.errno == errno.EIO:
                raise KvmError("KVM: host TSC is unstable, cannot continue") from None
            raise KvmError(f"KVM: ioctl (GET_TSC_KHZ) failed: {os.strerror(e.errno)}") from None

    # KVM_RUN is `run_ioctl(fd, KVM_RUN, 0)`, called by the VM's exit loop itself (no Python
    # frame in between): libc's ioctl through ctypes, which releases the GIL while the guest runs
    # and returns -1 with ctypes.get_errno() set on failure. fcntl.ioctl costs more per call here
    # (argument parsing and an audit event each time; docs/performance.md). A class attribute so
    # that the benchmarks can time it.
    run_ioctl = _libc_ioctl

    def close(self) -> None:
        if self.fd >= 0:
            self.run.close()
            os.close(self.fd)
            self.fd = -1
