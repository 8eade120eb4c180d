"""`ukvm run --trace` (issue 21): upstream's test_blk and test_net traced under the sandbox; every
line parses, and the hypercalls counted match what the guest did (spec/tests.md says what that is)."""
import collections
import json
import os
import shutil
import sys

import pytest

import solo5_sdk
from conftest import needs_kvm, run_hvt
from test_net import Netns, finish, flood

pytestmark = [needs_kvm, pytest.mark.skipif(not solo5_sdk.available(), reason=solo5_sdk.MISSING)]
UP = solo5_sdk.UPSTREAM / "tests"
MEM = "--mem=64"


def records(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines, "empty trace"
    out = [json.loads(line) for line in lines]          # every line is one JSON object
    assert all(isinstance(r, dict) and isinstance(r["t"], float | int) for r in out)
    assert [r["t"] for r in out] == sorted(r["t"] for r in out)
    return out


def counts(recs) -> collections.Counter:
    return collections.Counter((r.get("call"), r.get("result", {}).get("ret")) for r in recs if "call" in r)


@pytest.fixture(params=["3", "0"], ids=["cpl3", "cpl0"])
def cpl(request):
    return request.param


@pytest.mark.parametrize("sector", [512, 4096])
def test_trace_blk(tmp_path, cpl, sector):
    img = tmp_path / "storage.img"
    img.write_bytes(bytes(4 << 20))
    trace = tmp_path / "trace.jsonl"
    p = run_hvt(MEM, f"--x-guest-cpl={cpl}", f"--trace={trace}", f"--block:storage={img}",
                f"--block-sector-size:storage={sector}", "--", UP / "test_blk.hvt")
    assert p.returncode == 0 and "SUCCESS" in p.output, p.output
    recs = records(trace.read_text())
    assert recs[0]["event"] == "start" and recs[0]["guest_cpl"] == int(cpl)
    # test_blk writes then reads every tenth block and the last one (OK), then both at
    # offset = capacity (EINVAL); its other bad requests are refused by the bindings, no exit.
    blocks = (4 << 20) // sector
    ok = len(range(0, blocks, 10)) + 1
    c = counts(recs)
    assert c[("block_write", "OK")] == c[("block_read", "OK")] == ok
    assert c[("block_write", "EINVAL")] == c[("block_read", "EINVAL")] == 1
    io = [r for r in recs if r.get("call", "").startswith("block_")]
    assert all(r["args"]["len"] == sector and r["args"]["handle"] == io[0]["args"]["handle"] for r in io)
    bad = [r["args"]["offset"] for r in io if r["result"]["ret"] == "EINVAL"]
    assert bad == [4 << 20, 4 << 20]
    # Each read follows the write of the same block.
    pairs = list(zip(io[0::2], io[1::2]))
    assert all(w["call"] == "block_write" and r["call"] == "block_read" and
               w["args"]["offset"] == r["args"]["offset"] for w, r in pairs)
    assert sorted({w["args"]["offset"] // sector for w, _ in pairs if w["result"]["ret"] == "OK"}) == \
        sorted(set(range(0, blocks, 10)) | {blocks - 1})
    # The console lines in the trace are the guest's output, and the halt is its exit.
    text = "".join(r["text"] for r in recs if r.get("call") == "puts")
    assert "SUCCESS\n" in text and text in p.output
    assert recs[-1]["call"] == "halt" and recs[-1]["args"]["status"] == 0
    assert ("supervisor" in recs[-1]) == (cpl == "3")


def test_trace_to_stderr_keeps_stdout_the_guests(tmp_path):
    import subprocess
    p = subprocess.run([sys.executable, "-m", "ukvm", "run", MEM, "--trace=-", UP / "test_hello.hvt", "Hi"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"call"' not in p.stdout and "Hi" in p.stdout
    recs = records("\n".join(line for line in p.stderr.splitlines() if line.startswith("{")))
    puts = [r for r in recs if r.get("call") == "puts"]
    assert "".join(r["text"] for r in puts if len(r["text"]) == r["args"]["len"]) in p.stdout
    assert recs[-1]["call"] == "halt"


def test_trace_fatal_exit(tmp_path):
    trace = tmp_path / "t"
    p = run_hvt(MEM, "--x-guest-cpl=3", f"--trace={trace}", UP / "test_xnow.hvt")
    assert p.returncode == 1 and "translation fault" in p.output
    last = records(trace.read_text())[-1]
    assert last["exit"] == "fatal" and "translation fault" in last["error"]


def test_trace_unwritable_file_is_one_line(tmp_path):
    p = run_hvt(MEM, f"--trace={tmp_path}/no/such/dir/t", UP / "test_hello.hvt")
    assert p.returncode == 1
    assert p.output.strip().endswith("No such file or directory") and "Traceback" not in p.output


net_ok = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ping") is None,
                            reason="network namespaces need root, iproute2 and iputils-ping")
ECHO_FRAME = 14 + 20 + 8 + 56         # Ethernet + IPv4 + ICMP + ping's default payload


@net_ok
@pytest.mark.parametrize("ring", ["off", "on"])
def test_trace_net(tmp_path, ring):
    """test_net under a bounded flood: each echo request read is one net_read of a 98-byte frame,
    each reply one net_write; with the ring on, frames go through the ring and no net hypercall
    is made (the trace says so by their absence)."""
    ns = Netns()
    trace = tmp_path / "trace.jsonl"
    count = 300
    try:
        ns.tap("tap100", "10.0.0.1/24")
        proc = ns.popen(sys.executable, "-m", "ukvm", "run", MEM, "--x-guest-cpl=3", f"--net-ring={ring}",
                        f"--trace={trace}", "--net:service0=tap100", "--", UP / "test_net.hvt")
        try:
            for _ in range(30):
                if ns.run("ping", "-c", "1", "-W", "1", "10.0.0.2", timeout=10).returncode == 0:
                    break
            else:
                pytest.fail("guest did not answer within 30 s")
            rc, out = finish(flood(ns, "10.0.0.2", count))
            assert rc == 0 and f" {count} received" in out, out
        finally:
            proc.terminate()
        rc, out = finish(proc)
        assert rc == 1 and "Exiting on signal 15" in out, out
    finally:
        ns.close()
    recs = records(trace.read_text())
    # SIGTERM may land inside a hypercall: that one line has the error instead of a result.
    interrupted = [r for r in recs if "error" in r and "call" in r]
    assert len(interrupted) <= 1 and all("signal 15" in r["error"] for r in interrupted), interrupted
    recs = [r for r in recs if r not in interrupted]
    c = counts(recs)
    reads = [r for r in recs if r.get("call") == "net_read" and r["result"]["ret"] == "OK"]
    writes = [r for r in recs if r.get("call") == "net_write"]
    if ring == "on":
        assert not reads and not writes
        assert "net_write" in recs[0]["hypercalls"]
    else:
        echo_in = [r for r in reads if r["result"]["len"] == ECHO_FRAME]
        echo_out = [r for r in writes if r["args"]["len"] == ECHO_FRAME and r["result"]["ret"] == "OK"]
        answered = 1 + count           # the readiness pings that were answered, then the flood
        assert len(echo_in) >= answered and len(echo_out) >= answered
        assert len(echo_out) <= len(echo_in)   # a reply for each request read, never more
        assert all(r["result"]["ret"] == "OK" for r in writes)
    assert recs[-1]["exit"] == "fatal" and "signal 15" in recs[-1]["error"]
