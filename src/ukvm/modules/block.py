"""modules/block.py: block devices: --block options and BLOCK_READ/BLOCK_WRITE (hvt-abi.md 8.7, 10).

Data moves with preadv/pwritev straight between the backing file and guest memory. A write the
guest saw succeed is in the kernel's page cache, so it survives the tender being killed; on
every orderly end (halt, abort, signal, fatal error) close() flushes the files to stable storage.
"""
from __future__ import annotations

import errno
import os

from ukvm import hvt_abi as hvt
from ukvm.errors import HostIOError
from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, Entry
from ukvm.modules import Module
from ukvm.options import BLOCK, DECLINE, Option, integer

DEFAULT_BLOCK_SIZE = 512
MAX_PATH = 4096
LEN_MAX = (1 << 63) - 1
BAD_BLOCK_SIZE = "Block size must be a multiple of 2 greater than or equal 512"


class BlockDevice:
    __slots__ = ("entry", "path", "fd", "capacity", "block_size")

    def __init__(self, entry: Entry, path: str, fd: int, capacity: int):
        self.entry, self.path, self.fd, self.capacity = entry, path, fd, capacity
        self.block_size = 0


class BlockModule(Module):
    name = "block"
    options = (
        BLOCK,
        Option("block-sector-size", "set sector size of block device NAME; power of two >= 512",
               integer(0, 0xFFFF), metavar="SIZE", device=True, on_error=DECLINE),
    )

    def __init__(self, manifest):
        super().__init__(manifest)
        self.devices: dict[str, BlockDevice] = {}     # by manifest name
        self.sector_sizes: dict[str, int] = {}
        self.by_handle: dict[int, BlockDevice] = {}

    # --- options -------------------------------------------------------------------------------
    def set_option(self, opt: str, name: str, value) -> bool:
        if opt == "block":
            if self._entry(name) is None:
                return False
            self.attach(name, value)
            return True
        size = value
        if size < 512 or size & (size - 1):
            self.warn(BAD_BLOCK_SIZE)
            return False
        if self._entry(name) is None:
            return False
        self.sector_sizes[name] = size
        return True

    def _entry(self, name: str) -> Entry | None:
        entry = self.manifest.find(name, MFT_DEV_BLOCK_BASIC)
        if entry is None:
            self.warn(f"Resource not declared in manifest: '{name}'")
        return entry

    def attach(self, name: str, path: str, block_size: int | None = None) -> None:
        """Back manifest entry `name` with the file or block device at `path` (opened read-write)."""
        entry = self.manifest.find(name, MFT_DEV_BLOCK_BASIC)
        if entry is None:
            raise HostIOError(f"Resource not declared in manifest: '{name}'")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise HostIOError(f"Could not open block device: {path}: {os.strerror(e.errno)}") from None
        try:
            capacity = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(fd)
            raise HostIOError(f"{path}: Could not determine capacity: {os.strerror(e.errno)}") from None
        old = self.devices.pop(name, None)
        if old is not None:       # the later option wins
            os.close(old.fd)
        self.devices[name] = BlockDevice(entry, path, fd, capacity)
        if block_size is not None:
            self.sector_sizes[name] = block_size

    # --- set-up --------------------------------------------------------------------------------
    def setup(self, vm: VM) -> None:
        self.mem = vm.mem
        for name, dev in self.devices.items():
            bs = dev.block_size = self.sector_sizes.get(name, DEFAULT_BLOCK_SIZE)
            if dev.capacity % bs:
                raise HostIOError(f"{name}: Backing storage size must be block aligned ({bs} bytes)")
            if dev.capacity < bs:
                raise HostIOError(f"{name}: Backing storage must be at least 1 block ({bs} bytes) in size")
            dev.entry.set_block(dev.capacity, bs, dev.fd)
            self.by_handle[dev.entry.index] = dev
        if self.devices:
            vm.hypercalls.register(hvt.HVT_HYPERCALL_BLOCK_WRITE, self.hvt_hc_block_write)
            vm.hypercalls.register(hvt.HVT_HYPERCALL_BLOCK_READ, self.hvt_hc_block_read)

    def snapshot_state(self) -> dict:
        return {name: [dev.capacity, dev.block_size] for name, dev in self.devices.items()}

    def restore(self, vm: VM, state: dict) -> None:
        """The guest knows each device's geometry from boot: the files attached now must match.
        Their contents are not part of a snapshot (docs/serve.md)."""
        for name, dev in self.devices.items():
            want = state.get(name)
            if not (isinstance(want, list) and len(want) == 2 and all(type(v) is int for v in want)
                    and 512 <= want[1] <= 0xFFFF and not want[1] & (want[1] - 1)):
                raise HostIOError(f"{name}: not a block device of the snapshot")
            self.sector_sizes.setdefault(name, want[1])
            if [dev.capacity, self.sector_sizes[name]] != want:
                raise HostIOError(f"{name}: the snapshot's guest saw {want[0]} bytes in blocks of {want[1]}; "
                                  f"{dev.path} has {dev.capacity} bytes in blocks of {self.sector_sizes[name]}")
        self.setup(vm)

    # --- hypercalls ----------------------------------------------------------------------------
    # One request per exit: the common path is a few locals and one system call (the structs are
    # bound as default arguments; docs/performance.md).
    def _decode(self, gpa: int, _arg=hvt.hvt_hc_block_io) -> tuple[BlockDevice, int, int, int] | None:
        """The request if it is valid for a device, else None (after storing EINVAL)."""
        mem = self.mem
        handle, offset, data, length, _ret = mem.unpack(_arg, gpa)
        mem.check_writable(gpa, _arg.size)
        dev = self.by_handle.get(handle & 0xFFFFFFFF)    # handles are 32-bit in the lookup
        if dev is None or length > LEN_MAX or offset >= dev.capacity or offset + length > dev.capacity:
            mem.pack(hvt.U32, gpa + hvt.HVT_BLOCK_RET_OFFSET, hvt.SOLO5_R_EINVAL)
            return None
        return dev, offset, data, length

    def hvt_hc_block_write(self, gpa: int) -> None:
        self._transfer(gpa, True)

    def hvt_hc_block_read(self, gpa: int) -> None:
        self._transfer(gpa, False)

    def _transfer(self, gpa: int, write: bool, _ret=hvt.U32, _io=(os.preadv, os.pwritev)) -> None:
        """One request, straight between the file and guest memory, until all of it is done."""
        req = self._decode(gpa)
        if req is None:
            return
        dev, offset, data, length = req
        mem = self.mem
        io = _io[write]           # preadv/pwritev: the calls the sandbox allows on block files
        with (mem.view(data, length) if write else mem.writable_view(data, length)) as buf:
            try:
                done = n = io(dev.fd, [buf], offset)
                while 0 < n and done < length:           # short transfers: rare, finish them
                    with buf[done:] as rest:
                        n = io(dev.fd, [rest], offset + done)
                    done += n
            except OSError as e:
                verb = "writing" if write else "reading"
                raise HostIOError(f"Fatal error when {verb}: {os.strerror(e.errno)}", with_prog=False) from None
        if done < length:
            past = "wrote" if write else "read"
            raise HostIOError(f"Fatal error: {past} only {done} out of {length} bytes", with_prog=False)
        mem.pack(_ret, gpa + hvt.HVT_BLOCK_RET_OFFSET, hvt.SOLO5_R_OK)

    # --- teardown ------------------------------------------------------------------------------
    def sandbox_needs(self, vm: VM) -> Needs:
        from ukvm.sandbox.needs import Needs
        return Needs().on_fds(("preadv2", "pwritev2", "fsync"), {dev.fd for dev in self.devices.values()})

    def close(self) -> None:
        """Flush every device to stable storage, then close; the first failure is reported."""
        error = None
        for dev in self.devices.values():
            try:
                os.fsync(dev.fd)
            except OSError as e:
                if error is None and e.errno != errno.EINVAL:   # the fd cannot be synced
                    error = HostIOError(f"{dev.path}: flush failed: {os.strerror(e.errno)}")
            os.close(dev.fd)
        self.devices.clear()
        self.by_handle.clear()
        if error is not None:
            raise error
