"""modules/gdb/protocol.py: the GDB remote serial protocol's wire format, as the stub speaks it:
packet framing (checksums, escapes, acks) and the target description with the register layout of
the `g` packet. Pure: no VM, no socket (tests/unit/test_gdb_protocol.py property-tests it).
"""
from __future__ import annotations

MAX_PACKET = 4096

# The 'g' packet, in the order of the target description (name, bytes).
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
LAYOUT = ([(r, 8) for r in GPRS] + [("rip", 8), ("eflags", 4)] + [(s, 4) for s in SEGMENTS] +
          [(f"st{i}", 10) for i in range(8)] + [(c, 4) for c in X87_CTRL] +
          [(f"xmm{i}", 16) for i in range(16)] + [("mxcsr", 4), ("fs_base", 8), ("gs_base", 8)])


def _reg_xml(name: str, size: int, regnum: int) -> str:
    types = {"rip": "code_ptr", "rsp": "data_ptr", "rbp": "data_ptr", "eflags": "i386_eflags",
             "mxcsr": "i386_mxcsr"}
    t = types.get(name) or ("i387_ext" if size == 10 else "vec128" if size == 16 else f"int{size * 8}")
    group = ' group="float"' if name in X87_CTRL else ' group="vector"' if size == 16 else ""
    return f'<reg name="{name}" bitsize="{size * 8}" type="{t}" regnum="{regnum}"{group}/>'


def _target_xml() -> str:
    regs = {name: _reg_xml(name, size, i) for i, (name, size) in enumerate(LAYOUT)}
    core = [n for n, _ in LAYOUT[:40]]                  # rax .. fop: gdb's amd64 core feature
    sse = [f"xmm{i}" for i in range(16)] + ["mxcsr"]
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">'
        '<architecture>i386:x86-64</architecture>'
        '<feature name="org.gnu.gdb.i386.core">'
        '<flags id="i386_eflags" size="4"><field name="CF" start="0" end="0"/><field name="PF" start="2" end="2"/>'
        '<field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>'
        '<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>'
        '<field name="OF" start="11" end="11"/><field name="RF" start="16" end="16"/></flags>'
        + "".join(regs[n] for n in core) + '</feature>'
        '<feature name="org.gnu.gdb.i386.sse">'
        '<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/>'
        '<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>'
        '<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>'
        '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
        '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
        '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
        '<field name="uint128" type="uint128"/></union>'
        '<flags id="i386_mxcsr" size="4"><field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>'
        '<field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/><field name="UE" start="4" end="4"/>'
        '<field name="PE" start="5" end="5"/><field name="DAZ" start="6" end="6"/><field name="FZ" start="15" end="15"/>'
        '</flags>' + "".join(regs[n] for n in sse) + '</feature>'
        '<feature name="org.gnu.gdb.i386.segments">' + regs["fs_base"] + regs["gs_base"] + '</feature>'
        '</target>')


_target_xml_cache: list[bytes] = []


def target_xml() -> bytes:
    """The target description, built on first use (not at import: start-up time)."""
    if not _target_xml_cache:
        _target_xml_cache.append(_target_xml().encode())
    return _target_xml_cache[0]


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes([0x7D, b ^ 0x20])
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Frames `$payload#cc` out of a byte stream: good packets come out of feed(), a bad checksum
    asks for a resend, anything before `$` (acks, noise) is skipped, and a packet longer than
    MAX_PACKET is dropped. Ctrl-C (0x03) outside a packet is reported as the packet b"\\x03"."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """The complete packets in `data` (with what came before) and how many were corrupt."""
        self.buf += data
        packets, bad = [], 0
        while True:
            start = -1
            for i, b in enumerate(self.buf):
                if b == 0x03:
                    packets.append(b"\x03")
                    del self.buf[:i + 1]
                    break
                if b == ord("$"):
                    start = i
                    break
            else:
                self.buf.clear()
                return packets, bad
            if start < 0:
                continue
            del self.buf[:start]
            end = self.buf.find(b"#", 1)
            restart = self.buf.find(b"$", 1)
            if 0 < restart and (end < 0 or restart < end):
                del self.buf[:restart]          # a second `$` starts the packet over
                continue
            if end < 0:
                if len(self.buf) > MAX_PACKET + 4:
                    self.buf.clear()
                return packets, bad
            if len(self.buf) < end + 3:
                return packets, bad
            payload, sum_text = bytes(self.buf[1:end]), bytes(self.buf[end + 1:end + 3])
            del self.buf[:end + 3]
            if checksum(payload) == sum_text.lower() and len(payload) <= MAX_PACKET:
                packets.append(unescape(payload))
            else:
                bad += 1


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is not None:
                out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)
