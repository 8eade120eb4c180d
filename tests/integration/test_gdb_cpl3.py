"""--gdb with the guest's code at CPL3 (issue 21): real gdb sessions on a guest that uses SSE, built
with `ukvm build` (the runtime reports its #DB and int3) and with Solo5's toolchain (the
supervisor does), on upstream Solo5 binaries under the supervisor, on VMs restored from a
snapshot file, and the CPL0 session --x-guest-cpl=0 still gives."""
import re
import socket
import struct
import subprocess

import pytest

import solo5_sdk
from conftest import GUESTS, needs_kvm, read_until, ukvm
from test_gdb import _packet, _reply, finish, gdb, start, start_tender

pytestmark = [needs_kvm, pytest.mark.skipif(__import__("shutil").which("gdb") is None, reason="needs gdb")]
UP = solo5_sdk.UPSTREAM / "tests"
SRC = GUESTS / "test_debug_sse.c"


@pytest.fixture(scope="module")
def sse_guests(tmp_path_factory):
    """test_debug_sse.c at -O0 with SSE allowed: by `ukvm build` and by Solo5's toolchain."""
    out = tmp_path_factory.mktemp("gdb3")
    built = {"ukvm": out / "sse-ukvm.hvt"}
    p = ukvm("build", SRC, "-o", built["ukvm"], "--cflags=-O0", timeout=120)
    assert p.returncode == 0, p.stdout.decode()
    if solo5_sdk.available():
        built["solo5"] = solo5_sdk.build(SRC, out / "sse-solo5.hvt", cflags=("-O0", "-g", f"-I{GUESTS}"))
    return built


def kernel_of(sse_guests, build):
    if build not in sse_guests:
        pytest.skip(solo5_sdk.MISSING)
    return sse_guests[build]


def file_byte(kernel, addr: int) -> int:
    """The byte at `addr` in the ELF file's loaded image (what `m` must show under an int3)."""
    data = kernel.read_bytes()
    phoff, phnum = struct.unpack_from("<Q", data, 32)[0], struct.unpack_from("<H", data, 56)[0]
    for i in range(phnum):
        p_type, _f, off, vaddr, _pa, filesz, _ms, _al = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        if p_type == 1 and vaddr <= addr < vaddr + filesz:
            return data[off + addr - vaddr]
    raise AssertionError(f"{addr:#x} not in the file")


@pytest.mark.parametrize("build", ["ukvm", "solo5"])
def test_sse_guest_session_at_cpl3(sse_guests, build):
    kernel = kernel_of(sse_guests, build)
    proc, port = start_tender(kernel)
    out = gdb(kernel, port, "set breakpoint always-inserted on", "break circle_area", "continue",
              "info registers cs", "x/1xb $pc", "info registers xmm0", "print $xmm0.v2_double[0]", "print r",
              "next", "next", "print area", "finish", "step", "step", "bt",
              "watch counter", "continue", "delete", "continue")
    status, tender_out = finish(proc)
    m = re.search(r"Breakpoint 1, circle_area \(r=1\) at \S*test_debug_sse.c:\d+", out)
    assert m, out
    cs = int(re.search(r"^cs\s+0x([0-9a-f]+)", out, re.M)[1], 16)
    assert cs & 3 == 3, out                                   # the guest stayed at CPL3
    # The int3 under the breakpoint is invisible to memory reads.
    pc, shown = re.search(r"^(0x[0-9a-f]+) <circle_area\+\d+>:\s+0x([0-9a-f]{2})", out, re.M).groups()
    assert int(shown, 16) == file_byte(kernel, int(pc, 16)) != 0xCC, out
    assert re.search(r"^xmm0\s+\{v4_float", out, re.M), out
    assert "$1 = 1\n$2 = 1\n" in out                          # xmm0 holds r, a double
    assert "$3 = 3.25" in out                                 # after two `next`s
    assert re.search(r"in solo5_app_main .*\n.*circle_area.*\nValue returned is \$4 = 3.25", out), out   # finish
    assert re.search(r"#0  bump \(by=1\) at \S*test_debug_sse.c:\d+\n#1 .* in solo5_app_main", out), out
    assert "Old value = 0\nNew value = 1" in out, out        # the watchpoint, without set can-use-hw...
    assert "[Inferior 1 (Remote target) exited with code 06]" in out, out
    assert status == 6 and "SUCCESS" in tender_out, tender_out


@pytest.mark.skipif(not solo5_sdk.available(), reason=solo5_sdk.MISSING)
def test_upstream_sse_binary_under_the_supervisor():
    """Solo5's own test_fpu (movaps/mulps) stepped instruction by instruction at CPL3."""
    kernel = UP / "test_fpu.hvt"
    proc, port = start_tender(kernel)
    out = gdb(kernel, port, "break solo5_app_main", "continue", "info registers cs", "bt",
              "stepi", "stepi", "stepi", "info registers rip", "tbreak solo5_exit", "continue", "bt", "continue")
    status, tender_out = finish(proc)
    assert "Breakpoint 1, 0x" in out and "in solo5_app_main ()" in out, out
    assert int(re.search(r"^cs\s+0x([0-9a-f]+)", out, re.M)[1], 16) == 0x0B, out
    assert re.search(r"#1 .* in _start \(", out), out
    rips = [int(x, 16) for x in re.findall(r"^(0x[0-9a-f]+) in solo5_app_main \(\)", out, re.M)]
    assert len(rips) == 3 and rips == sorted(set(rips)), out          # three steps forward
    assert re.search(r"Temporary breakpoint 2, 0x[0-9a-f]+ in solo5_exit \(\)", out), out
    assert "exited normally" in out and status == 0, tender_out
    assert "SUCCESS" in tender_out


@pytest.mark.parametrize("build", ["ukvm", "solo5"])
def test_gdb_on_a_restored_snapshot(sse_guests, build, tmp_path):
    kernel = kernel_of(sse_guests, build)
    snap = tmp_path / "ready.snap"
    p = ukvm("run", "--mem=16", "--snapshot-at=ready", f"--snapshot={snap}", kernel)
    assert p.returncode == 0, p.stdout.decode()
    proc, port = start(f"--restore={snap}")
    out = gdb(kernel, port, "bt", "break circle_area", "continue", "print r", "finish", "delete", "continue")
    status, tender_out = finish(proc)
    assert re.search(r"#0  .*solo5_yield", out) or re.search(r"#1 .* in solo5_yield", out), out
    assert "Breakpoint 1, circle_area (r=1)" in out and "Value returned is $2 = 3.25" in out, out
    assert "[Inferior 1 (Remote target) exited with code 06]" in out
    assert status == 6 and "Traceback" not in tender_out, tender_out


@pytest.mark.skipif(not solo5_sdk.available(), reason=solo5_sdk.MISSING)
def test_x_guest_cpl_0_still_gives_the_cpl0_session():
    kernel = UP / "test_hello.hvt"
    proc, port = start("--mem=16", "--x-guest-cpl=0", "--", kernel, "Hi")
    out = gdb(kernel, port, "break solo5_app_main", "continue", "info registers cs", "continue")
    status, tender_out = finish(proc)
    assert int(re.search(r"^cs\s+0x([0-9a-f]+)", out, re.M)[1], 16) == 0x08, out
    assert "exited normally" in out and status == 0, tender_out


def test_breakpoint_protocol_at_cpl3(sse_guests, tmp_path):
    """The raw protocol at CPL3: the stop reply of a software breakpoint, and `m` over it; with
    --trace, the stop is in the trace."""
    kernel = sse_guests["ukvm"]
    trace = tmp_path / "t.jsonl"
    proc, port = start("--mem=16", f"--trace={trace}", "--", kernel)
    addr = None
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert _reply(sock) == b"S05"
        sock.sendall(_packet(b"qSupported:swbreak+"))
        assert b"swbreak+" in _reply(sock)
        syms = subprocess.run(["nm", str(kernel)], capture_output=True, text=True).stdout
        addr = int(re.search(r"^([0-9a-f]+) T circle_area$", syms, re.M)[1], 16)
        sock.sendall(_packet(b"Z0,%x,1" % addr))
        assert _reply(sock) == b"OK"
        sock.sendall(_packet(b"m%x,1" % addr))
        assert _reply(sock) == b"%02x" % file_byte(kernel, addr)
        sock.sendall(_packet(b"c"))
        assert _reply(sock) == b"T05swbreak:;"
        sock.sendall(_packet(b"p10"))                          # rip: at the breakpoint
        assert int.from_bytes(bytes.fromhex(_reply(sock).decode()), "little") == addr
        sock.sendall(_packet(b"z0,%x,1" % addr))
        assert _reply(sock) == b"OK"
        sock.sendall(_packet(b"c"))
        assert _reply(sock) == b"W06"
    status, _ = finish(proc)
    assert status == 6
    import json
    stops = [r for r in map(json.loads, trace.read_text().splitlines()) if r.get("exit") == "debug"]
    assert len(stops) == 1 and int(stops[0]["frame"], 16) > 0, stops


def test_ctrl_c_stops_a_spinning_guest_at_cpl3(tmp_path):
    kernel = tmp_path / "debug.hvt"
    p = ukvm("build", GUESTS / "test_debug.c", "-o", kernel, "--cflags=-O0", timeout=120)
    assert p.returncode == 0, p.stdout.decode()
    proc, port = start_tender(kernel, "spin")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert _reply(sock) == b"S05"
        sock.sendall(_packet(b"c"))
        read_until(proc, b"spinning", timeout=30)
        sock.sendall(b"\x03")
        assert _reply(sock) == b"S02"
        sock.sendall(_packet(b"p10"))                         # rip: inside the guest's loop
        rip = int.from_bytes(bytes.fromhex(_reply(sock).decode()), "little")
        assert 0x100000 <= rip < 0x200000
        sock.sendall(_packet(b"p12"))                         # cs: the guest's, at CPL3
        assert int.from_bytes(bytes.fromhex(_reply(sock).decode()), "little") & 3 == 3
        sock.sendall(_packet(b"k"))
        status, out = finish(proc)
    assert status == 1 and "gdb: the debugger killed the guest" in out


def test_detach_at_a_breakpoint_lets_the_guest_run_on(sse_guests):
    kernel = sse_guests["ukvm"]
    proc, port = start_tender(kernel)
    out = gdb(kernel, port, "break circle_area", "continue", "detach")
    status, tender_out = finish(proc)
    assert "Breakpoint 1, circle_area" in out, out
    assert status == 6 and "SUCCESS" in tender_out, tender_out      # the int3 went with the debugger
