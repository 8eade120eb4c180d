"""bench/sandbox.py: what confinement costs `ukvm serve` (docs/security.md, "What it costs").

The lwIP httpd example served confined (the default) and with --x-no-sandbox, in alternating
rounds in the same invocation (so both see the same machine load), each round a fresh server in
the same network namespace: N sequential requests, then N with C at once. Prints one JSON object:
per variant the median over rounds of p50, p99 (ms), requests/s and serve's CPU time per
request (ms, all threads), the ratios confined / unconfined, and the cost of the filter per
system call (filter_cost). Run as root:  nice -n 19 python3 bench/sandbox.py [--rounds 3] [-n 500] [-c 16]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]
from test_net import Netns  # noqa: E402  (the tests' namespace helper: made and removed here)

CLIENT = ROOT / "tests" / "integration" / "http_client.py"


def load(ns, n, conc=None) -> dict:
    args = ["seq", n, "/b/"] if conc is None else ["conc", n, conc, "/b/"]
    out = ns.run(sys.executable, CLIENT, "127.0.0.1", 8080, *args, timeout=900)
    res = json.loads(out.stdout)
    assert res["ok"] == n, res["errors"]
    lat = sorted(res["seconds"])
    rate = n / (sum(lat) if conc is None else res["elapsed"])
    return {"p50": lat[len(lat) // 2] * 1e3, "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, "rps": rate}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far (less sensitive than latency to
    what else runs on the machine)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(ns, image, confined: bool, n: int, conc: int) -> dict:
    flags = [] if confined else ["--x-no-sandbox"]
    proc = ns.popen(sys.executable, "-m", "ukvm", "serve", "--pool=4", "--mem=64", "--listen=127.0.0.1:8080",
                    "--guest=10.0.0.2:80", "--host-ip=10.0.0.1/24", *flags, image,
                    env={**os.environ, "PYTHONPATH": str(ROOT / "src")})      # this checkout's ukvm
    out = b""
    try:
        deadline = time.monotonic() + 120
        while b"ukvm serve: listening" not in out:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, out
            out += line
        rss = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS"))
        cpu0 = cpu_seconds(proc.pid)
        seq = load(ns, n)
        cpu1 = cpu_seconds(proc.pid)
        par = load(ns, n, conc)
        cpu2 = cpu_seconds(proc.pid)
        seq["cpu_ms"], par["cpu_ms"] = (cpu1 - cpu0) / n * 1e3, (cpu2 - cpu1) / n * 1e3
    finally:
        proc.terminate()
        out += proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out.decode(errors="replace")
    return {"seq": seq, "conc": par, "rss_kib": rss}


FILTER_COST = r"""
import json, os, socket, sys, time
from ukvm.kvm import abi
from ukvm.sandbox.bpf import compile_needs, install
from ukvm.sandbox.needs import Needs
from ukvm.sandbox.policy import interpreter_needs, serve_loop_needs
efd, sock = os.eventfd(1, os.EFD_NONBLOCK), socket.socket()
def measure(n=200000):
    out = {}
    for name, call in (("getpid", os.getpid), ("eventfd write", lambda: os.eventfd_write(efd, 1)),
                       ("ioctl FIONBIO", lambda: sock.setblocking(False))):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                call()
            best = min(best, (time.perf_counter_ns() - t0) / n)
        out[name] = best
    return out
before = measure()
needs = interpreter_needs() | serve_loop_needs({100}, {101, efd}) | Needs().on_fds("write", {1})
for i in range(4):      # what 4 clones declare (stand-in fds)
    vcpu = 200 + 3 * i
    needs = needs | (Needs().ioctl({vcpu}, abi.KVM_RUN, abi.KVM_GET_REGS, abi.KVM_SET_REGS, abi.KVM_SET_SREGS,
                                   abi.KVM_SET_MSRS, abi.KVM_SET_XSAVE, abi.KVM_SET_XCRS, abi.KVM_SET_FPU)
                     .ioctl({vcpu + 1}, abi.KVM_GET_DIRTY_LOG).on_fds(("read", "readv", "write"), {vcpu + 2, 300 + i})
                     .on_fds("epoll_wait", {400 + i}).on_fds("pread64", {500}))
program = compile_needs(needs)
install(program)
after = measure()
os.write(1, json.dumps({"instructions": len(program) // 8, "unconfined_ns": before, "confined_ns": after,
                        "cost_ns": {k: after[k] - before[k] for k in before}}).encode())
"""


def filter_cost() -> dict:
    """ns per system call without and with serve's filter (4 clones), in a child (a filter is for
    life): getpid (allowed at once), an eventfd write (an fd test), ioctl FIONBIO (ioctl block)."""
    out = subprocess.run([sys.executable, "-S", "-c", FILTER_COST], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--image", help="a built httpd.hvt (default: build examples/httpd)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        image = args.image
        if image is None:
            image = str(Path(work) / "httpd.hvt")
            subprocess.run([sys.executable, ROOT / "examples" / "httpd" / "build.py", "-o", image], check=True)
        ns = Netns()
        try:
            rounds = {True: [], False: []}
            for _ in range(args.rounds):
                for confined in (True, False):
                    rounds[confined].append(one_round(ns, image, confined, args.n, args.c))
        finally:
            ns.close()
    result = {}
    for confined, rs in rounds.items():
        name = "confined" if confined else "unconfined"
        result[name] = {f"{kind}_{k}": statistics.median(r[kind][k] for r in rs)
                        for kind in ("seq", "conc") for k in ("p50", "p99", "rps", "cpu_ms")}
        result[name]["rss_kib"] = statistics.median(r["rss_kib"] for r in rs)
    result["ratio"] = {k: result["confined"][k] / result["unconfined"][k] for k in result["confined"]}
    result["filter_cost"] = filter_cost()
    result["setup"] = {"rounds": args.rounds, "n": args.n, "concurrency": args.c, "timed": sys.executable}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
