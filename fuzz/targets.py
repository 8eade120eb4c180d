"""targets.py: fuzz targets for ukvm's parsers of untrusted input, run against plain memory
(no KVM). The invariant for each: accept the input or raise UkvmError (our own error type);
any other exception is a bug. Used by tests/unit/test_fuzz.py (hypothesis, short) and
fuzz/run_atheris.py (coverage-guided, long)."""
import os
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ukvm import hvt_abi as hvt                                         # noqa: E402
from ukvm.machine.elf import NOTE_MFT1, ElfFile                                 # noqa: E402
from ukvm.errors import UkvmError                                       # noqa: E402
from ukvm.machine.exits import HypercallTable                                   # noqa: E402
from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, Entry, Manifest, parse_json  # noqa: E402
from ukvm.machine.memory import PROT_READ, GuestMemory                          # noqa: E402
from ukvm.modules.block import BlockModule                              # noqa: E402
from ukvm.modules.core import CoreModule                                # noqa: E402
from ukvm.modules.net import NetDevice                                  # noqa: E402
from ukvm.modules.net.backend import NetBackend
from ukvm.modules.net.ring import RingServer                                        # noqa: E402

MIB = 1 << 20
_memfd = os.memfd_create("ukvm-fuzz-elf")
_path = f"/proc/self/fd/{_memfd}"


def fuzz_elf(data: bytes) -> None:
    """The loader end to end: header, notes, manifest, segments into 8 MiB of memory."""
    os.ftruncate(_memfd, 0)
    os.pwrite(_memfd, data, 0)
    try:
        with ElfFile(_path) as elf:
            elf.abi()
            elf.ukvm_mode()
            payload = elf.find_note(NOTE_MFT1)
            if payload is not None:
                Manifest.parse(payload, "fuzz")
            mem = GuestMemory(8 * MIB)
            try:
                elf.load(mem)
            finally:
                mem.close()
    except UkvmError:
        pass


def fuzz_manifest_json(data: bytes) -> None:
    try:
        parse_json(data.decode("utf-8", "replace"), "fuzz.json")
    except UkvmError:
        pass


def fuzz_manifest_binary(data: bytes) -> None:
    try:
        Manifest.parse(data, "fuzz")
    except UkvmError:
        pass


class _VM:
    def __init__(self, mem):
        self.mem = mem
        self.hypercalls = HypercallTable()


_disk = os.memfd_create("ukvm-fuzz-disk")
os.ftruncate(_disk, 64 * 1024)
_console = os.open(os.devnull, os.O_WRONLY)


def fuzz_hypercalls(data: bytes) -> None:
    """Data = nr (1 byte), argument GPA (4 bytes), then bytes written at that GPA first."""
    if len(data) < 5:
        return
    nr, gpa = data[0] % hvt.HVT_HYPERCALL_MAX, struct.unpack_from("<I", data, 1)[0] % (4 * MIB + 64)
    mem = GuestMemory(4 * MIB)
    manifest = Manifest([Entry(0, "", 0x40000000), Entry(1, "storage", MFT_DEV_BLOCK_BASIC)])
    core, block = CoreModule(manifest), BlockModule(manifest)
    core.stdout_fd = _console
    block.attach("storage", f"/proc/self/fd/{_disk}")
    try:
        body = data[5:]
        if gpa + len(body) <= mem.size:
            mem.host_write(gpa, body)
        mem.protect(0x300000, 0x301000, PROT_READ)     # OUT fields there must be refused
        vm = _VM(mem)
        core.setup(vm)
        block.setup(vm)
        handler = vm.hypercalls.handlers[nr]
        if handler is not None and nr != hvt.HVT_HYPERCALL_POLL:   # POLL may sleep: checked apart
            handler(gpa)
    except UkvmError:
        pass
    finally:
        block.close()
        core.close()
        mem.close()


def fuzz_ring(data: bytes) -> None:
    """Data = entries written into the ring; the server processes as many as were written."""
    mem = GuestMemory(6 * MIB)
    mem.limit = 4 * MIB
    a, b = os.pipe()
    os.set_blocking(a, False)
    entry = Entry(1, "service0", MFT_DEV_NET_BASIC)
    server = RingServer(mem, {1: NetDevice(entry, NetBackend("fuzz", a, 1500, owns_fd=False))}, os.eventfd(0), lambda e: None)
    try:
        n = min(len(data) // 32, 1024)
        ring = server.ring
        ring[128:128 + 32 * n] = data[:32 * n]
        # Reads go to the pipe's read end; writes to it fail with EBADF, a host error.
        server._process(0, n)
    except UkvmError:
        pass
    finally:
        server.stop()
        os.close(a)
        os.close(b)
        mem.close()


TARGETS = {"elf": fuzz_elf, "manifest_json": fuzz_manifest_json, "manifest_binary": fuzz_manifest_binary,
           "hypercalls": fuzz_hypercalls, "ring": fuzz_ring}
