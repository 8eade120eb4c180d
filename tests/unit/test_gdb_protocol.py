"""The GDB stub's packet framing and command handling, without KVM: a fake vCPU over real guest
memory. Property tests hold them to the parsers' invariant: any input is answered or refused,
nothing else escapes."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukvm.errors import UkvmError
from ukvm.kvm import abi
from ukvm.machine.memory import GuestMemory
from ukvm.modules.gdb.stub import LAYOUT, GdbStub, PacketReader, checksum, escape, target_xml, unescape

MIB = 1 << 20


def framed(payload: bytes) -> bytes:
    data = escape(payload)
    return b"$" + data + b"#" + checksum(data)


class FakeVcpu:
    def __init__(self):
        self.regs = abi.kvm_regs(rip=0x100000, rsp=0x3FFFF8, rflags=2)
        self.debug = None

    def get_regs(self):
        return abi.kvm_regs.from_buffer_copy(self.regs)

    def set_regs(self, regs):
        self.regs = abi.kvm_regs.from_buffer_copy(regs)

    def get_sregs(self):
        return abi.kvm_sregs()

    def get_fpu(self):
        return abi.kvm_fpu(fcw=0x37F, mxcsr=0x1F80)

    def set_guest_debug(self, control, regs):
        self.debug = (control, list(regs))


class FakeVM:
    def __init__(self):
        self.mem = GuestMemory(4 * MIB)
        self.vcpu = FakeVcpu()
        self.guest_cpl = 0           # the CPL0 session: breakpoints in the debug registers


@pytest.fixture
def stub():
    gdb = GdbStub(FakeVM())
    yield gdb
    gdb.vm.mem.close()


def test_framing_round_trip_and_acks():
    reader = PacketReader()
    packets, bad = reader.feed(b"+junk" + framed(b"m100000,4") + b"$bad#00" + framed(b"X}$#*"))
    assert packets == [b"m100000,4", b"X}$#*"] and bad == 1
    packets, bad = reader.feed(framed(b"c")[:3])
    assert packets == [] and bad == 0
    assert reader.feed(framed(b"c")[3:] + b"\x03") == ([b"c", b"\x03"], 0)


def test_registers_memory_and_breakpoints(stub):
    g = bytes.fromhex(stub.command(b"g").decode())
    assert len(g) == sum(size for _, size in LAYOUT)
    assert int.from_bytes(g[128:136], "little") == 0x100000          # rip after the 16 GPRs
    assert stub.command(b"p10") == (0x100000).to_bytes(8, "little").hex().encode()
    assert stub.command(b"p%x" % len(LAYOUT)) == stub.command(b"p-1") == b"E01"   # no such register
    stub.command(b"G" + (bytes(128) + (0x100040).to_bytes(8, "little") + (0x202).to_bytes(4, "little")).hex().encode())
    assert stub.vm.vcpu.regs.rip == 0x100040 and stub.vm.vcpu.regs.rflags == 0x202
    assert stub.command(b"M100000,2:abcd") == b"OK" and stub.command(b"m100000,2") == b"abcd"
    assert stub.command(b"m400000,1") == b"E01"                       # past guest memory
    assert stub.command(b"Z0,100040,1") == b"OK" and stub.command(b"Z1,100080,1") == b"OK"
    stub._apply_debug()
    control, regs = stub.vm.vcpu.debug
    assert control & abi.KVM_GUESTDBG_USE_HW_BP and regs[:2] == [0x100040, 0x100080] and regs[7] & 0xF == 0xA
    assert stub.command(b"z0,100040,1") == b"OK" and len(stub.hw) == 1
    for addr in (0x100100, 0x100200, 0x100300):
        assert stub.command(b"Z1,%x,1" % addr) == b"OK"
    assert stub.command(b"Z1,100400,1") == b"E01"                     # four debug registers
    xml = b""
    for _ in range(64):                                               # read in chunks, as gdb does
        part = stub.command(b"qXfer:features:read:target.xml:%x,ffff" % len(xml))
        xml += part[1:]
        if part[:1] == b"l":
            break
    assert xml == target_xml() and xml.startswith(b"<?xml")
    assert stub.command(b"s") is None and stub.stepping


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64),
                          st.sampled_from([b"g", b"G", b"m", b"M", b"p", b"Z", b"z", b"q", b"c", b"s", b"?"])
                          .flatmap(lambda k: st.binary(max_size=40).map(lambda rest: framed(k + rest)))),
                max_size=6))
def test_any_bytes_are_answered_or_refused(chunks):
    gdb = GdbStub(FakeVM())
    try:
        reader = PacketReader()
        for chunk in chunks:
            packets, _bad = reader.feed(chunk)
            for packet in packets:
                if packet == b"\x03" or packet[:1] in (b"k", b"D"):    # end or detach the session
                    continue
                try:
                    reply = gdb.command(packet)
                except UkvmError:
                    continue
                assert reply is None or isinstance(reply, bytes)
    finally:
        gdb.vm.mem.close()


def test_unescape_inverts_escape():
    data = bytes(range(256))
    assert unescape(escape(data)) == data
