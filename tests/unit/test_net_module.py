"""Net module hypercalls against plain guest memory, with a socketpair standing in for a TAP."""
import os
import socket
import struct

import pytest

from elfgen import manifest_payload
from test_hypercalls import FakeVM
from ukvm import hvt_abi as hvt
from ukvm.errors import GuestMemoryError
from ukvm.machine.manifest import MFT_DEV_NET_BASIC, Manifest
from ukvm.machine.memory import PROT_READ, GuestMemory
from ukvm.modules.core import CoreModule
from ukvm.modules.net import NetDevice, NetModule, parse_mac
from ukvm.modules.net.backend import NetBackend

MIB = 1 << 20
ARG, BUF = 0x200000, 0x210000


@pytest.fixture
def net():
    mem = GuestMemory(4 * MIB)
    mem.protect(0x300000, 0x301000, PROT_READ)
    manifest = Manifest.parse(manifest_payload(("service0", MFT_DEV_NET_BASIC)), "t")
    guest_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    guest_end.setblocking(False)
    mod = NetModule(manifest)
    mod.ring_mode = "off"
    mod.devices["service0"] = NetDevice(manifest.entries[1], NetBackend("tap", guest_end.fileno(), 1500, owns_fd=False))
    vm = FakeVM(mem)
    vm.core = CoreModule(manifest)
    vm.host_features = 0
    vm.guest_cpl = 0
    vm.core.setup(vm)
    mod.setup(vm)
    mod.vm, mod.host = vm, host_end
    yield mod
    mod.close()
    vm.core.close()
    guest_end.close()
    host_end.close()
    mem.close()


def call(mod, nr, handle=1, data=BUF, length=64):
    mod.mem.host_write(ARG, struct.pack("<QQQi4x", handle, data, length, -1))
    mod.vm.hypercalls.handlers[nr](ARG)
    return struct.unpack("<Qi", mod.mem.host_read(ARG + 16, 12))


def test_entry_filled_and_mac_generated(net):
    e = net.manifest.entries[1]
    mac, mtu = struct.unpack_from("<6sH", e.u)
    assert e.attached and mtu == 1500 and mac[0] & 1 == 0 and mac[0] & 2 == 2


def test_write_and_read(net):
    net.mem.host_write(BUF, b"frame!")
    assert call(net, hvt.HVT_HYPERCALL_NET_WRITE, length=6)[1] == hvt.SOLO5_R_OK
    assert net.host.recv(100) == b"frame!"
    assert call(net, hvt.HVT_HYPERCALL_NET_READ, length=2048) == (2048, hvt.SOLO5_R_AGAIN)   # len untouched
    net.host.send(b"incoming")
    assert call(net, hvt.HVT_HYPERCALL_NET_READ, length=2048) == (8, hvt.SOLO5_R_OK)
    assert net.mem.host_read(BUF, 8) == b"incoming"


@pytest.mark.parametrize("handle", [0, 2, 63, 2**64 - 1])
def test_unknown_handles_are_einval(net, handle):
    assert call(net, hvt.HVT_HYPERCALL_NET_WRITE, handle=handle)[1] == hvt.SOLO5_R_EINVAL
    assert call(net, hvt.HVT_HYPERCALL_NET_READ, handle=handle)[1] == hvt.SOLO5_R_EINVAL


@pytest.mark.parametrize("nr,data,length", [
    (hvt.HVT_HYPERCALL_NET_READ, 0x300000, 64),        # receive into a host read-only page
    (hvt.HVT_HYPERCALL_NET_WRITE, 4 * MIB - 8, 64),
    (hvt.HVT_HYPERCALL_NET_WRITE, BUF, 2**64 - 1),
])
def test_bad_buffers_are_fatal(net, nr, data, length):
    with pytest.raises(GuestMemoryError):
        call(net, nr, data=data, length=length)


def test_poll_reports_the_nic(net):
    net.host.send(b"x")
    net.mem.host_write(ARG, struct.pack("<Q", 0))
    net.vm.hypercalls.handlers[hvt.HVT_HYPERCALL_POLL](ARG)
    assert struct.unpack("<Qi", net.mem.host_read(ARG + 8, 12)) == (1 << 1, 1)


@pytest.mark.parametrize("text,mac", [("2:0:0:aa:BB:c", b"\x02\x00\x00\xaa\xbb\x0c"), ("00:11:22:33:44:55", bytes.fromhex("001122334455")),
                                      ("1:2:3:4:5", None), ("1:2:3:4:5:6:7", None), ("001:2:3:4:5:6", None), ("g:2:3:4:5:6", None),
                                      ("1:2:3:4:5:", None)])
def test_parse_mac(text, mac):
    assert parse_mac(text) == mac
