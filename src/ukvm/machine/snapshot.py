"""snapshot.py: a VM frozen at a hypercall boundary, in memory or in a file (docs/serve.md).

A Snapshot holds guest memory in a file descriptor (a memfd, or a snapshot file at a page-aligned
offset) and everything else as plain data: the vCPU registers, where guest memory is protected on
the host, the boot features and each module's device state. VM.from_snapshot() maps that memory
privately (copy on write), so any number of clones share the snapshot's pages and each pays only
for the pages it dirties; Clone.reset() (clone.py) puts those back and reloads the registers.

File layout: a 64-byte header (magic, version, metadata length and CRC-32, where the memory image
starts and how long it is), the metadata as JSON, then the memory image, page aligned and sparse.
A snapshot file is input like an ELF file: every field is checked before anything is built from
it, and a bad one is one line (SnapshotError). The memory image is guest data: like an image's
code it can only harm the guest that runs it.

Over 400 lines: the format's reader (every field checked), its writer (SnapshotWriter: a safe
rename in a shared directory) and what each needs once confined stay with the one format.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import stat
import struct
import zlib
from dataclasses import dataclass, field

from ukvm import hvt_abi as hvt
from ukvm.errors import UkvmError
from ukvm.kvm import abi
from ukvm.kvm.ioctls import Kvm, VcpuFd
from ukvm.machine.manifest import Manifest

MAGIC = b"UKVMSNAP"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQQ24x")   # magic, version, meta_len, meta_crc, reserved, mem_offset, mem_size
PAGE = 4096
MAX_META = 1 << 20
# MSRs a Solo5 guest can have changed: TLS and kernel GS bases, syscall/sysenter entry points
# (unused by Solo5, restored for completeness), PAT, TSC_AUX. The TSC is handled apart.
MSR_TSC = 0x10
SAVED_MSRS = (0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103, 0xC0000081, 0xC0000082,
              0xC0000083, 0xC0000084, 0x174, 0x175, 0x176, 0x277)
PROTECTIONS = ("readonly", "noaccess")



class SnapshotError(UkvmError):
    pass


@dataclass
class VcpuState:
    """Registers as KVM reports them; the raw structs, so a restore is byte for byte."""
    regs: bytes
    sregs: bytes
    fpu: bytes                  # kvm_xsave when KVM has XSAVE, else kvm_fpu
    xcrs: bytes | None
    msrs: dict[int, int]
    tsc: int

    @classmethod
    def capture(cls, kvm: Kvm, vcpu: VcpuFd) -> VcpuState:
        has_xsave = kvm.check_extension(abi.KVM_CAP_XSAVE) > 0
        fpu = vcpu.get_xsave() if has_xsave else vcpu.get_fpu()
        xcrs = bytes(vcpu.get_xcrs()) if kvm.check_extension(abi.KVM_CAP_XCRS) > 0 else None
        tsc = vcpu.get_msrs([MSR_TSC]).get(MSR_TSC, 0)
        return cls(bytes(vcpu.get_regs()), bytes(vcpu.get_sregs()), bytes(fpu), xcrs,
                   vcpu.get_msrs(list(SAVED_MSRS)), tsc)

    def restore(self, vcpu: VcpuFd) -> None:
        """Load every register; the guest's TSC restarts where it was captured, so its monotonic
        clock goes on from the snapshot's time in every clone (docs/serve.md)."""
        vcpu.set_sregs(abi.kvm_sregs.from_buffer_copy(self.sregs))
        if self.xcrs is not None:
            vcpu.set_xcrs(abi.kvm_xcrs.from_buffer_copy(self.xcrs))
        if len(self.fpu) == ctypes.sizeof(abi.kvm_xsave):
            vcpu.set_xsave(abi.kvm_xsave.from_buffer_copy(self.fpu))
        else:
            vcpu.set_fpu(abi.kvm_fpu.from_buffer_copy(self.fpu))
        vcpu.set_regs(abi.kvm_regs.from_buffer_copy(self.regs))
        vcpu.set_msrs({**self.msrs, MSR_TSC: self.tsc})

    def to_json(self) -> dict:
        return {"regs": self.regs.hex(), "sregs": self.sregs.hex(), "fpu": self.fpu.hex(),
                "xcrs": None if self.xcrs is None else self.xcrs.hex(),
                "msrs": {f"{k:#x}": v for k, v in self.msrs.items()}, "tsc": self.tsc}

    @classmethod
    def from_json(cls, d: dict) -> VcpuState:
        fpu = _blob(d, "fpu")
        if len(fpu) not in (ctypes.sizeof(abi.kvm_xsave), ctypes.sizeof(abi.kvm_fpu)):
            raise SnapshotError(f"vcpu.fpu has {len(fpu)} bytes")
        xcrs = None if d.get("xcrs") is None else _blob(d, "xcrs", abi.kvm_xcrs)
        msrs_in = _typed(d, "msrs", dict)
        msrs = {}
        for key, value in msrs_in.items():
            index = int(key, 16) if isinstance(key, str) and re.fullmatch(r"0x[0-9a-f]{1,8}", key) else None
            if index not in SAVED_MSRS or not _is_u64(value):
                raise SnapshotError(f"vcpu.msrs: unexpected entry {key!r}")
            msrs[index] = value
        tsc = _typed(d, "tsc", int)
        if not _is_u64(tsc):
            raise SnapshotError("vcpu.tsc out of range")
        return cls(_blob(d, "regs", abi.kvm_regs), _blob(d, "sregs", abi.kvm_sregs), fpu, xcrs, msrs, tsc)


@dataclass
class Snapshot:
    """A VM's state. `mem_fd` is owned by the snapshot and closed by close()."""
    mem_fd: int
    mem_offset: int
    size: int
    limit: int
    protections: dict[str, list[tuple[int, int]]]
    vcpu: VcpuState
    host_features: int
    ring_gpa: int
    guest_cpl: int
    supervised: bool
    manifest_payload: bytes
    modules: dict[str, dict]
    kernel: str = ""
    path: str = field(default="<memory>")
    _map: object = field(default=None, init=False, repr=False, compare=False)

    def memory_view(self) -> memoryview:
        """The snapshot's memory as a read-only shared mapping of its fd, made once and shared by
        every clone: the page cache's own pages, no copy (a clone's reset copies from it)."""
        if self._map is None:
            import mmap
            mm = mmap.mmap(self.mem_fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                           offset=self.mem_offset)
            self._map = (mm, memoryview(mm))
        return self._map[1]

    def manifest(self) -> Manifest:
        return Manifest.parse(self.manifest_payload, self.path)

    # --- files ---------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write to `path` (created 0600, replaced if present): header, metadata, sparse memory."""
        writer = SnapshotWriter(path)
        try:
            writer.write(self)
        finally:
            writer.close()

    def encode_head(self) -> tuple[bytes, int]:
        """The header and metadata, and where the memory image starts."""
        meta = json.dumps(self._meta(), separators=(",", ":")).encode()
        mem_offset = (HEADER.size + len(meta) + PAGE - 1) // PAGE * PAGE
        return HEADER.pack(MAGIC, VERSION, len(meta), zlib.crc32(meta), 0, mem_offset, self.size) + meta, mem_offset

    def _meta(self) -> dict:
        return {"size": self.size, "limit": self.limit,
                "protections": {k: [list(r) for r in v] for k, v in self.protections.items()},
                "vcpu": self.vcpu.to_json(), "host_features": self.host_features,
                "ring_gpa": self.ring_gpa, "guest_cpl": self.guest_cpl, "supervised": self.supervised,
                "manifest": self.manifest_payload.hex(), "modules": self.modules, "kernel": self.kernel}

    def write_image(self, fd: int) -> None:
        """The snapshot file's bytes into `fd` (empty): header, metadata, sparse memory."""
        head, mem_offset = self.encode_head()
        os.pwrite(fd, head, 0)
        os.ftruncate(fd, mem_offset + self.size)
        for start, end in data_ranges(self.mem_fd, self.mem_offset, self.size):
            copy_range(self.mem_fd, self.mem_offset + start, fd, mem_offset + start, end - start)

    @classmethod
    def from_fd(cls, fd: int, what: str) -> Snapshot:
        """A snapshot file already open (it takes `fd`): checked as load() checks a file."""
        try:
            return cls._parse(fd, what)
        except SnapshotError as e:
            os.close(fd)
            raise SnapshotError(f"{what}: invalid snapshot: {e}") from None
        except OSError as e:             # a read error: still one line
            os.close(fd)
            raise SnapshotError(f"{what}: {os.strerror(e.errno) if e.errno else e}") from None
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def load(cls, path: str) -> Snapshot:
        try:
            # O_NONBLOCK: a FIFO named by the user must not hang the open (_parse refuses it).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise SnapshotError(f"{path}: {os.strerror(e.errno)}") from None
        return cls.from_fd(fd, path)

    @classmethod
    def _parse(cls, fd: int, path: str) -> Snapshot:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):     # a directory, FIFO or device; or a pipe from a confined boot
            raise SnapshotError("not a regular file")
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size:
            raise SnapshotError("file too short")
        magic, version, meta_len, meta_crc, _res, mem_offset, size = HEADER.unpack(head)
        if magic != MAGIC:
            raise SnapshotError("not a ukvm snapshot (bad magic)")
        if version != VERSION:
            raise SnapshotError(f"version {version}, this ukvm reads version {VERSION}")
        if meta_len > MAX_META or HEADER.size + meta_len > mem_offset or mem_offset % PAGE:
            raise SnapshotError("bad header (metadata length or memory offset)")
        if size == 0 or size % hvt.MEM_GRANULE or size > hvt.MEM_MAX + hvt.HVT_RING_AREA:
            raise SnapshotError(f"bad memory size {size}")
        if st.st_size < mem_offset + size:
            raise SnapshotError("file truncated (memory image incomplete)")
        raw = os.pread(fd, meta_len, HEADER.size)
        if len(raw) != meta_len or zlib.crc32(raw) != meta_crc:
            raise SnapshotError("metadata checksum mismatch")
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise SnapshotError("metadata is not JSON") from None
        if not isinstance(meta, dict) or _typed(meta, "size", int) != size:
            raise SnapshotError("metadata does not match the header")
        limit = _typed(meta, "limit", int)
        if not 0 < limit <= size or limit % PAGE:
            raise SnapshotError(f"bad memory limit {limit}")
        prots = _typed(meta, "protections", dict)
        protections: dict[str, list[tuple[int, int]]] = {}
        for kind in PROTECTIONS:
            ranges = []
            for r in _typed(prots, kind, list):
                if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)
                        and 0 <= r[0] < r[1] <= limit and r[0] % PAGE == 0 and r[1] % PAGE == 0):
                    raise SnapshotError(f"bad {kind} range {r!r}")
                ranges.append((r[0], r[1]))
            protections[kind] = ranges
        features = _typed(meta, "host_features", int)
        ring_gpa = _typed(meta, "ring_gpa", int)
        if features & ~(hvt.HVT_FEATURE_RING_IO | hvt.UKVM_FEATURE_CPL3) or features < 0:
            raise SnapshotError(f"unknown host features {features:#x}")
        if (features & hvt.HVT_FEATURE_RING_IO) and not (ring_gpa == limit and size - limit >= hvt.HVT_RING_AREA) \
                or not features & hvt.HVT_FEATURE_RING_IO and ring_gpa != 0:
            raise SnapshotError(f"bad ring address {ring_gpa:#x}")
        guest_cpl = _typed(meta, "guest_cpl", int)
        if guest_cpl not in (0, 3):
            raise SnapshotError(f"bad guest CPL {guest_cpl}")
        manifest_payload = _blob(meta, "manifest")
        try:
            Manifest.parse(manifest_payload, path)
        except UkvmError as e:
            raise SnapshotError(f"manifest: {e}") from None
        modules = _typed(meta, "modules", dict)
        if not all(isinstance(v, dict) for v in modules.values()):
            raise SnapshotError("bad module state")
        vcpu = VcpuState.from_json(_typed(meta, "vcpu", dict))
        return cls(fd, mem_offset, size, limit, protections, vcpu, features, ring_gpa, guest_cpl,
                   bool(_typed(meta, "supervised", bool)), manifest_payload, modules,
                   str(meta.get("kernel", "")), path)

    def close(self) -> None:
        if self._map is not None:
            mm, view = self._map
            view.release()
            mm.close()
            self._map = None
        if self.mem_fd >= 0:
            os.close(self.mem_fd)
            self.mem_fd = -1


def _typed(d: dict, key: str, kind: type):
    value = d.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SnapshotError(f"field {key!r} missing or not {kind.__name__}")
    return value


def _blob(d: dict, key: str, struct_type: type | None = None) -> bytes:
    text = _typed(d, key, str)
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise SnapshotError(f"field {key!r} is not hex") from None
    if struct_type is not None and len(data) != ctypes.sizeof(struct_type):
        raise SnapshotError(f"field {key!r} has {len(data)} bytes, expected {ctypes.sizeof(struct_type)}")
    return data


def _is_u64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


class SnapshotWriter:
    """A snapshot file made safely where others may write too (a shared directory, as root):
    the data goes to a new file made with O_EXCL under a random name in the target's directory
    (never an existing file, never through a symlink), is synced, and is renamed over the target
    (rename replaces a symlink standing there, it does not follow it). The directory and the file
    are opened by the constructor, so a confined tender can write it later (writer_needs)."""

    def __init__(self, path: str):
        self.path = path
        directory, self.name = os.path.split(os.path.abspath(path))
        if not self.name:
            raise SnapshotError(f"{path}: cannot write snapshot: not a file name")
        self.fd = -1
        self.tmp = None
        try:
            self.dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"{path}: cannot write snapshot: {os.strerror(e.errno)}") from None
        for _ in range(100):        # a name taken is tried again with another
            tmp = f".{self.name}.{secrets.token_hex(8)}.tmp"
            try:
                self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=self.dirfd)
                self.tmp = tmp
                break
            except FileExistsError:
                continue
            except OSError as e:
                self.close()
                raise SnapshotError(f"{path}: cannot write snapshot: {os.strerror(e.errno)}") from None
        else:
            self.close()
            raise SnapshotError(f"{path}: cannot write snapshot: no free temporary name")

    def write(self, snap: Snapshot) -> None:
        """Header, metadata, sparse memory, fsync, rename into place."""
        try:
            snap.write_image(self.fd)
            os.fsync(self.fd)
            os.rename(self.tmp, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot write snapshot: {os.strerror(e.errno)}") from None
        self.tmp = None
        try:
            os.fsync(self.dirfd)      # the rename itself is durable
        except OSError:
            pass

    def close(self) -> None:
        """Release the descriptors; a temporary file not renamed into place is removed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.dirfd)
            except OSError:
                pass
            self.tmp = None
        if getattr(self, "dirfd", -1) >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    def sandbox_needs(self) -> Needs:
        """What write() and close() do once confined: the file, and renaming or removing in its
        directory (the snapshot memfd's reads are capture_needs')."""
        from ukvm.sandbox.needs import Needs, arg_in
        return (Needs().on_fds(("pwrite64", "ftruncate", "fsync"), {self.fd, self.dirfd})
                .when("renameat", arg_in(0, {self.dirfd}), arg_in(2, {self.dirfd}))
                .when("renameat2", arg_in(0, {self.dirfd}), arg_in(2, {self.dirfd}))
                .when("unlinkat", arg_in(0, {self.dirfd})))          # close() after a failed run


# --- what the clone machinery asks of the sandbox (ukvm.sandbox.needs) ----------------------------
VCPU_RESTORE_IOCTLS = (abi.KVM_SET_SREGS, abi.KVM_SET_XCRS, abi.KVM_SET_XSAVE, abi.KVM_SET_FPU,
                       abi.KVM_SET_REGS, abi.KVM_SET_MSRS)
VCPU_CAPTURE_IOCTLS = (abi.KVM_GET_XSAVE, abi.KVM_GET_FPU, abi.KVM_GET_XCRS, abi.KVM_GET_MSRS,
                       abi.KVM_GET_REGS, abi.KVM_GET_SREGS)


def clone_needs(vm) -> Needs:
    """What Clone.reset (clone.py) does: read the dirty log, set every register. The snapshot's
    bytes are copied from its mapping, made when the clone was (no system call)."""
    from ukvm.sandbox.needs import Needs
    return Needs().ioctl({vm.vmfd.fd}, abi.KVM_GET_DIRTY_LOG).ioctl({vm.vcpu.fd}, *VCPU_RESTORE_IOCTLS)


def capture_needs(vm) -> Needs:
    """What VM.snapshot does: read the registers, copy resident memory (mincore) into a memfd made
    then, with MFD_CLOEXEC; the memfd's calls are allowed on descriptors not open now only."""
    from ukvm.sandbox.needs import Needs, arg_in, arg_not_in, open_fds
    later = arg_not_in(0, open_fds())
    needs = (Needs().ioctl({vm.kvm.fd}, abi.KVM_CHECK_EXTENSION).ioctl({vm.vcpu.fd}, *VCPU_CAPTURE_IOCTLS)
             .allow("mincore").when("memfd_create", arg_in(1, {os.MFD_CLOEXEC})))
    for name in ("ftruncate", "pwrite64", "pread64", "lseek"):
        needs.when(name, later)
    return needs


# --- memory --------------------------------------------------------------------------------------
def data_ranges(fd: int, offset: int, size: int) -> list[tuple[int, int]]:
    """Runs of [offset, offset+size) in `fd` that are not holes, relative to offset."""
    out = []
    pos = offset
    end = offset + size
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:          # ENXIO: no data after pos
            break
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        out.append((start - offset, stop - offset))
        pos = stop
    return out


def copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    while length > 0:
        chunk = os.pread(src, min(length, 1 << 20), src_off)
        if not chunk:
            raise OSError(errno.EIO, "short read")
        os.pwrite(dst, chunk, dst_off)
        src_off += len(chunk)
        dst_off += len(chunk)
        length -= len(chunk)


def capture_memory(mem) -> int:
    """A memfd holding guest memory's resident pages (host-inaccessible pages stay holes)."""
    fd = os.memfd_create("ukvm-snapshot", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, mem.size)
        for start, end in mem.resident_ranges():
            with mem.host_view(start, end - start) as data:
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], start + written)
    except BaseException:
        os.close(fd)
        raise
    return fd
