"""--gdb: Debian's gdb in batch mode against the real tender (and a small protocol client for
Ctrl-C, which gdb's batch mode cannot wait for)."""
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import solo5_sdk
from conftest import GUESTS, needs_kvm, read_until, run_hvt, ukvm
from test_net import finish

pytestmark = [needs_kvm, pytest.mark.skipif(shutil.which("gdb") is None,
                                            reason="needs gdb (scripts/test.sh installs it)")]
PORT_LINE = re.compile(rb'target remote localhost:(\d+)')


def start(*run_args):
    """`ukvm run --gdb --gdb-port=0 RUN_ARGS` waiting for a debugger; returns (process, port)."""
    proc = subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--gdb", "--gdb-port=0", *map(str, run_args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = read_until(proc, b"target remote localhost:", timeout=30)
    m = PORT_LINE.search(out + read_until(proc, b"\n", timeout=5))
    assert m, out
    return proc, int(m[1])


def start_tender(kernel, *args):
    """The tender waiting for a debugger on a free port; returns (process, port)."""
    return start("--mem=16", "--", kernel, *args)


def gdb(kernel, port, *commands):
    args = ["gdb", "-batch", "-nx", "-ex", f"target remote localhost:{port}"]
    args += [a for c in commands for a in ("-ex", c)] + [str(kernel)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def debug_guests(tmp_path_factory):
    """test_debug.c built without optimisation (so that gdb's line stepping is exact): --cpl0 and
    the default build, which --gdb runs at CPL0 too (docs/debugging.md)."""
    out = tmp_path_factory.mktemp("gdb")
    built = {}
    for name, extra in (("cpl0", ["--cpl0", "--cflags=-mgeneral-regs-only -O0"]), ("default", ["--cflags=-O0"])):
        built[name] = out / f"debug-{name}.hvt"
        p = ukvm("build", GUESTS / "test_debug.c", "-o", built[name], *extra, timeout=120)
        assert p.returncode == 0, p.stdout.decode()
    return built


@pytest.mark.parametrize("build", ["cpl0", "default"])
def test_debugging_session(debug_guests, build):
    kernel = debug_guests[build]
    proc, port = start_tender(kernel)
    out = gdb(kernel, port, "break solo5_app_main", "continue", "bt", "info registers rip", "print answer",
              "next", "next", "step", "step", "bt",
              "set can-use-hw-watchpoints 0", "watch counter", "continue", "delete", "continue")
    status, tender_out = finish(proc)
    assert re.search(r"Breakpoint 1, solo5_app_main \(si=.*\) at \S*test_debug.c:\d+", out), out
    assert re.search(r"#0  solo5_app_main .* at \S*test_debug.c:\d+\n#1 .* in ukvm_start", out), out
    assert re.search(r"^rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <solo5_app_main\+\d+>", out, re.M), out
    assert "$1 = 42" in out
    assert re.search(r"#0  bump \(by=1\) at \S*test_debug.c:11\n#1 .* in solo5_app_main", out), out   # step
    assert "Old value = 0\nNew value = 1" in out, out       # the watchpoint on the global
    assert "[Inferior 1 (Remote target) exited with code 03]" in out
    assert status == 3, tender_out
    assert "Connection from debugger at 127.0.0.1" in tender_out


@pytest.mark.skipif(not solo5_sdk.available(), reason=solo5_sdk.MISSING)
def test_upstream_binary(tmp_path):
    kernel = solo5_sdk.UPSTREAM / "tests" / "test_hello.hvt"
    proc, port = start_tender(kernel, "Hello_Solo5")
    out = gdb(kernel, port, "break solo5_app_main", "continue", "bt", "info registers rip", "continue")
    status, tender_out = finish(proc)
    assert "Breakpoint 1, 0x" in out and "in solo5_app_main ()" in out, out
    assert re.search(r"#1 .* in _start \(", out), out
    assert "exited normally" in out and status == 0, tender_out
    assert "SUCCESS" in tender_out


def _packet(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


def _reply(sock, timeout=20) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += sock.recv(4096)
        m = re.search(rb"\$([^#]*)#[0-9a-f]{2}", buf)
        if m:
            return m[1]
    raise AssertionError(f"no reply in {buf!r}")


def test_ctrl_c_stops_a_spinning_guest(debug_guests):
    proc, port = start_tender(debug_guests["cpl0"], "spin")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert _reply(sock) == b"S05"                         # stopped before the first instruction
        sock.sendall(_packet(b"c"))
        read_until(proc, b"spinning", timeout=30)
        sock.sendall(b"\x03")
        assert _reply(sock) == b"S02"                         # SIGINT
        sock.sendall(_packet(b"p10"))                         # rip: inside the guest's loop
        rip = int.from_bytes(bytes.fromhex(_reply(sock).decode()), "little")
        assert 0x100000 <= rip < 0x200000
        sock.sendall(_packet(b"m40000000,8"))                 # past guest memory: an error, no crash
        assert _reply(sock) == b"E01"
        sock.sendall(_packet(b"k"))
        status, out = finish(proc)
    assert status == 1 and "gdb: the debugger killed the guest" in out


@pytest.mark.parametrize("value", ["", "x", "65536", "-1"])
def test_malformed_port(debug_guests, value):
    p = run_hvt("--gdb", f"--gdb-port={value}", debug_guests["cpl0"])
    assert p.returncode == 1 and p.output.strip() == "ukvm: Malformed argument to --gdb-port"


def test_detach_lets_the_guest_run_on(debug_guests):
    proc, port = start_tender(debug_guests["cpl0"])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert _reply(sock) == b"S05"
        sock.sendall(_packet(b"D"))
        assert _reply(sock) == b"OK"
        status, out = finish(proc)
    assert status == 3 and "total 10" in out
