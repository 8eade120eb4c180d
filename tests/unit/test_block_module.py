"""Block module against plain guest memory: option parsing, request checks, host I/O errors."""
import os
import struct

import pytest

from elfgen import manifest_payload
from test_hypercalls import FakeVM
from ukvm import hvt_abi as hvt
from ukvm.errors import GuestMemoryError, HostIOError
from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, Manifest
from ukvm.machine.memory import PROT_READ, GuestMemory
from ukvm.modules.block import BlockModule

MIB = 1 << 20
ARG = 0x200000
BUF = 0x210000


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * 64)   # 16 KiB
    return p


@pytest.fixture
def block(disk):
    mem = GuestMemory(4 * MIB)
    mem.protect(0x300000, 0x301000, PROT_READ)
    m = Manifest.parse(manifest_payload(("storage", MFT_DEV_BLOCK_BASIC), ("net", MFT_DEV_NET_BASIC)), "t")
    mod = BlockModule(m)
    mod.warnings = []
    mod.warn = mod.warnings.append
    assert mod.handle_arg(f"--block:storage={disk}")
    vm = FakeVM(mem)
    mod.setup(vm)
    mod.vm = vm
    yield mod
    mod.close()
    mem.close()


def request(mod, nr, handle=1, offset=0, data=BUF, length=512):
    mod.mem.host_write(ARG, struct.pack("<QQQQi4x", handle, offset, data, length, -1))
    mod.vm.hypercalls.handlers[nr](ARG)
    return struct.unpack("<i", mod.mem.host_read(ARG + 32, 4))[0]


def test_manifest_entry_is_filled_in(block, disk):
    e = block.manifest.entries[1]
    assert e.attached and struct.unpack_from("<QH", e.u) == (16384, 512)


def test_read_and_write_go_to_the_file(block, disk):
    assert request(block, hvt.HVT_HYPERCALL_BLOCK_READ, offset=1024, length=1024) == hvt.SOLO5_R_OK
    assert block.mem.host_read(BUF, 1024) == (bytes(range(256)) * 4)
    block.mem.host_write(BUF, b"\xaa" * 2048)
    assert request(block, hvt.HVT_HYPERCALL_BLOCK_WRITE, offset=14336, length=2048) == hvt.SOLO5_R_OK
    assert disk.read_bytes()[14336:] == b"\xaa" * 2048


@pytest.mark.parametrize("kw", [
    {"handle": 0}, {"handle": 2}, {"handle": 64}, {"handle": 2**64 - 1},
    {"offset": 16384}, {"offset": 16383, "length": 2}, {"offset": 2**64 - 512},
    {"length": 2**63}, {"length": 16385},
])
def test_guest_mistakes_return_einval(block, disk, kw):
    before = disk.read_bytes()
    assert request(block, hvt.HVT_HYPERCALL_BLOCK_WRITE, **kw) == hvt.SOLO5_R_EINVAL
    assert request(block, hvt.HVT_HYPERCALL_BLOCK_READ, **kw) == hvt.SOLO5_R_EINVAL
    assert disk.read_bytes() == before


def test_handle_is_looked_up_as_32_bits(block):
    assert request(block, hvt.HVT_HYPERCALL_BLOCK_READ, handle=(1 << 32) + 1) == hvt.SOLO5_R_OK


@pytest.mark.parametrize("nr,data,length", [
    (hvt.HVT_HYPERCALL_BLOCK_READ, 0x300000, 512),     # into a host read-only page
    (hvt.HVT_HYPERCALL_BLOCK_READ, 4 * MIB - 256, 512),
    (hvt.HVT_HYPERCALL_BLOCK_WRITE, 4 * MIB, 512),
])
def test_bad_buffers_are_fatal(block, nr, data, length):
    with pytest.raises(GuestMemoryError):
        request(block, nr, data=data, length=length)


def test_short_read_is_fatal(block, disk):
    os.truncate(disk, 8192)     # the file shrank behind the tender's back
    with pytest.raises(HostIOError) as e:
        request(block, hvt.HVT_HYPERCALL_BLOCK_READ, offset=7680, length=1024)
    assert str(e.value) == "Fatal error: read only 512 out of 1024 bytes"
    assert not e.value.with_prog


def test_option_parsing(block, tmp_path):
    assert not block.handle_arg("--block:storage=")
    assert not block.handle_arg("--block:sto rage=x")
    assert not block.handle_arg("--blocks:storage=x")
    assert not block.handle_arg("--block:net=x")
    assert block.warnings == ["Resource not declared in manifest: 'net'"]
    assert not block.handle_arg("--block-sector-size:storage=1000")
    assert block.warnings[-1] == "Block size must be a multiple of 2 greater than or equal 512"
    assert not block.handle_arg("--block-sector-size:storage=12x")
    assert block.handle_arg("--block-sector-size:storage=2048")
    with pytest.raises(HostIOError, match="Could not open block device: .*: No such file or directory"):
        block.handle_arg(f"--block:storage={tmp_path}/missing")


def test_close_flushes_every_device(block, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    fds = [d.fd for d in block.devices.values()]
    block.close()
    assert synced == fds


@pytest.mark.parametrize("state", [{}, {"storage": [16384]}, {"storage": [16384, "512"]},
                                   {"storage": [16384, 3]}, {"storage": [16384, 1 << 20]}])
def test_restore_refuses_a_geometry_no_boot_could_give(disk, state):
    """A snapshot file's block state is input: anything but [capacity, power-of-two size] is one error."""
    m = Manifest.parse(manifest_payload(("storage", MFT_DEV_BLOCK_BASIC)), "t")
    mod = BlockModule(m)
    mod.attach("storage", str(disk))
    try:
        with pytest.raises(HostIOError, match="storage: not a block device of the snapshot"):
            mod.restore(FakeVM(GuestMemory(4 * MIB)), state)
    finally:
        mod.close()
