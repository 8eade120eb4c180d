"""Ring server logic against plain guest memory and socketpairs standing in for TAPs."""
import os
import socket
import struct

import pytest

from elfgen import manifest_payload
from ukvm import hvt_abi as hvt
from ukvm.errors import GuestMemoryError
from ukvm.machine.manifest import MFT_DEV_NET_BASIC, Manifest
from ukvm.machine.memory import GuestMemory
from ukvm.modules.net import NetDevice
from ukvm.modules.net.backend import NetBackend
from ukvm.modules.net.ring import OFF_COMMITS, OFF_ENTRIES, RING_COMMIT, RING_ENTRY, RingServer

MIB = 1 << 20
# Control-word byte offsets as hvt-abi.md section 9.3 gives them (the server addresses them as
# 32-bit words; these tests check the two agree).
OFF_ENT_TAIL, OFF_ENT_HEAD, OFF_COM_TAIL = 0, 64, 68


@pytest.fixture
def ring():
    mem = GuestMemory(6 * MIB)
    mem.limit = 4 * MIB
    guest_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    guest_end.setblocking(False)
    entry = Manifest.parse(manifest_payload(("service0", MFT_DEV_NET_BASIC)), "t").entries[1]
    errors = []
    server = RingServer(mem, {1: NetDevice(entry, NetBackend("tap", guest_end.fileno(), 1500, owns_fd=False))}, os.eventfd(0), errors.append)
    server.host = host_end
    yield server
    server.stop()
    guest_end.close()
    host_end.close()
    mem.close()


def submit(server, index, op, handle, data, length, req_id):
    RING_ENTRY.pack_into(server.ring, OFF_ENTRIES + 32 * (index & 1023), op, handle, data, length, req_id)


def commit(server, index):
    return RING_COMMIT.unpack_from(server.ring, OFF_COMMITS + 16 * (index & 1023))


def test_layout_lies_above_the_hypercall_limit(ring):
    assert ring.gpa == 4 * MIB and len(ring.ring) == hvt.HVT_RING_STRUCT_SIZE == 49280


def test_writes_then_read(ring):
    ring.mem.host_write(0x200000, b"frame-one")
    ring.mem.host_write(0x200100, b"frame-two!")
    submit(ring, 0, 1, 1, 0x200000, 9, 0)
    submit(ring, 1, 1, 1, 0x200100, 10, 1)
    ring.host.send(b"incoming")
    submit(ring, 2, 2, 1, 0x300000, 2048, 2)
    submit(ring, 3, 2, 1, 0x300000, 2048, 3)      # nothing more pending
    assert ring._process(0, 4) == 4
    assert ring.host.recv(100) == b"frame-one" and ring.host.recv(100) == b"frame-two!"
    assert commit(ring, 0) == (2, hvt.SOLO5_R_OK, 8)
    assert commit(ring, 1) == (3, hvt.SOLO5_R_AGAIN, 0)
    assert ring.mem.host_read(0x300000, 8) == b"incoming"
    assert struct.unpack_from("<I", ring.ring, OFF_ENT_HEAD)[0] == 4
    assert struct.unpack_from("<I", ring.ring, OFF_COM_TAIL)[0] == 2


def test_counters_wrap(ring):
    start = 0xFFFFFFFE
    struct.pack_into("<I", ring.ring, OFF_COM_TAIL, start)
    for i in range(4):
        submit(ring, start + i, 2, 1, 0x300000, 64, i)
    assert ring._process(start, (start + 4) & 0xFFFFFFFF) == 2
    assert [commit(ring, start + i)[0] for i in range(4)] == [0, 1, 2, 3]
    assert struct.unpack_from("<I", ring.ring, OFF_COM_TAIL)[0] == 2


def test_unknown_handle_and_operation(ring):
    submit(ring, 0, 2, 7, 0x300000, 64, 10)        # read on an unknown handle: EINVAL commit
    submit(ring, 1, 1, 7, 0x300000, 64, 11)        # write on an unknown handle: skipped
    submit(ring, 2, 9, 1, 0x300000, 64, 12)        # unknown operation: skipped
    assert ring._process(0, 3) == 3
    assert commit(ring, 0) == (10, hvt.SOLO5_R_EINVAL, 0)
    assert struct.unpack_from("<I", ring.ring, OFF_COM_TAIL)[0] == 1


@pytest.mark.parametrize("op,data,length", [
    (1, 4 * MIB - 8, 64),          # write from past the hypercall limit (into the ring itself)
    (2, 4 * MIB, 64),              # read into the ring
    (1, 0x200000, 2**32 - 1),
    (2, 2**64 - 8, 64),
])
def test_bad_guest_buffers_are_fatal(ring, op, data, length):
    ring.host.send(b"x")
    submit(ring, 0, op, 1, data, length, 0)
    with pytest.raises(GuestMemoryError):
        ring._process(0, 1)


def test_guest_cannot_move_the_host_cursor(ring):
    # ent_head is host-owned: the thread keeps its own copy and only ever writes it.
    struct.pack_into("<I", ring.ring, OFF_ENT_HEAD, 999)
    struct.pack_into("<I", ring.ring, OFF_ENT_TAIL, 0)
    assert ring._process(0, 0) == 0
    assert struct.unpack_from("<I", ring.ring, OFF_ENT_HEAD)[0] == 0


def test_impossible_ring_state_stops_the_vm(ring):
    struct.pack_into("<I", ring.ring, OFF_ENT_TAIL, 5000)
    errors = []
    ring.on_error = errors.append
    ring.start()
    ring.thread.join(timeout=10)
    assert not ring.thread.is_alive()
    assert [str(e) for e in errors] == ["Invalid guest ring state: ent_tail=5000, ent_head=0"]
