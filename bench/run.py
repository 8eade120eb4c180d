#!/usr/bin/env python3
"""bench/run.py: ukvm's benchmarks, each printed next to a floor measured in the same run.

    python3 bench/run.py [--quick] [--only NAME[,NAME]] [--json bench/results.json]

Sections: paths (every way a guest reaches the VMM, timed in C), start (cold start, RSS), hypercall, block, net, cpl3 (the same guests at CPL3 and CPL0),
solo5 (the guests built by Solo5's toolchain on ukvm CPL3, ukvm CPL0 and solo5-hvt), exits (one
exit per operation, ukvm against solo5-hvt on the same binaries, and the KVM_RUN floors), serve
(the lwIP httpd example: a fresh clone per request against one long-running server, a cold
`ukvm run` per request and Solo5's build on solo5-hvt; the reset alone; memory per clone),
kubernetes (CRI create+start of a ukvm pod against runc's pause container, via containerd), observe
(what --profile, --trace and --gdb cost a guest, against the same guest without them). Guests are built from bench/guests
with `ukvm build`; the floors come from bench/floor.c (built here with gcc), the interpreter
itself, pread/pwrite, and a Linux peer across a veth pair. Needs root and /dev/kvm; net needs
iproute2 and iputils-ping. Figures are medians. Which part of a figure is guest-side (CPL0 code,
emulated on kvm_pvm) and which is the tender's is measured in-process by timing KVM_RUN.

Over 400 lines: one script, so that every section is compared with floors measured in the same
invocation and shares the helpers below; each section is one bench_* function.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# Subprocesses (`python -m ukvm build`, the tender) use this checkout too, not an installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
LAUNCHER = ROOT / "bin" / "ukvm-hvt"
# The launcher started by the real interpreter: `python3` on PATH may be a shim (pyenv's adds
# tens of ms to every start), so what is timed is the tender, not the shim.
TENDER = [sys.executable, "-I", "-S", str(LAUNCHER)]
MIRAGE_HTTP = ROOT.parent / "shared" / "ocaml-mirage" / "mirage_http8080.hvt"   # issue 22 (../shared)
GUEST_CFLAGS = "--cflags=-mgeneral-regs-only"
ROWS: list[dict] = []


STORAGE = json.dumps({"type": "solo5.manifest", "version": 1, "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]})


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def row(section, name, value, unit, floor=None, floor_name="", note=""):
    ratio = (value / floor) if floor else None
    ROWS.append({"section": section, "name": name, "value": value, "unit": unit, "floor": floor,
                 "floor_name": floor_name, "ratio": ratio, "note": note})
    f = f"{floor:12.1f}" if floor is not None else " " * 12
    r = f"{ratio:7.2f}x" if ratio is not None else " " * 8
    print(f"{section:9} {name:42} {value:12.1f} {unit:8} {f} {r}  {floor_name}{'  ' + note if note else ''}",
          flush=True)


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def build(work: Path, name: str, manifest: str | None = None, extra=(), cpl0=True) -> Path:
    """A bench guest; cpl0 builds (the default of most sections) run their code at CPL0."""
    out = work / f"{name}{'' if cpl0 else '-cpl3'}.hvt"
    src = ROOT / "bench" / "guests" / f"{name}.c"
    if not src.exists():
        src = ROOT / "tests" / "guests" / f"{name}.c"
    cmd = [sys.executable, "-m", "ukvm", "build", src, "-o", out, *extra]
    if cpl0:
        cmd += ["--cpl0", GUEST_CFLAGS]
    if manifest:
        (work / f"{name}.json").write_text(manifest)
        cmd += ["--manifest", work / f"{name}.json"]
    sh(*cmd)
    return out


def timed_runs(cmd, n) -> float:
    """Median wall time (ms) of `cmd` over n runs."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def paired_runs(cmds: dict, n: int) -> dict:
    """Interleaved runs of each command (so load on a shared host hits all alike): per command
    the median wall time, the median CPU time (user + system of the child) and the minimum wall
    time (interference only adds to it), in ms."""
    wall = {name: [] for name in cmds}
    cpu = {name: [] for name in cmds}
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(n):
            for name, cmd in cmds.items():
                t = time.perf_counter()
                proc = subprocess.Popen([str(c) for c in cmd], stdout=null)
                _, status, usage = os.wait4(proc.pid, 0)
                wall[name].append((time.perf_counter() - t) * 1e3)
                cpu[name].append((usage.ru_utime + usage.ru_stime) * 1e3)
                if status != 0:
                    raise RuntimeError(f"{cmd} failed ({status:#x})")
    finally:
        os.close(null)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]), min(wall[name])) for name in cmds}


def child_rss(floor, cmd) -> int:
    """Peak RSS (KiB) of one run of cmd, as seen by the small C parent in floor.c."""
    return int(sh(floor, "rss", *cmd))


class KvmRunTimer:
    """In-process breakdown: time inside KVM_RUN (guest + exit) vs in the tender between runs."""

    def __init__(self):
        from ukvm.kvm import ioctls
        self.ioctls = ioctls
        self.orig = ioctls.VcpuFd.run_ioctl
        self.inside = 0.0
        self.exits = 0
        timer = self

        def run_ioctl(fd, request, arg):
            t = time.perf_counter()
            try:
                return timer.orig(fd, request, arg)
            finally:
                timer.inside += time.perf_counter() - t
                timer.exits += 1
        ioctls.VcpuFd.run_ioctl = staticmethod(run_ioctl)

    def close(self):
        self.ioctls.VcpuFd.run_ioctl = self.orig


def in_process(kernel_path, args, mem=8 << 20, modules=None, guest_cpl="auto"):
    """Run one VM in this process; returns (total s, inside KVM_RUN s, exits, guest stdout)."""
    from ukvm.machine.vm import VM, Kernel
    kernel = Kernel(str(kernel_path))
    timer = KvmRunTimer()
    r, w = os.pipe()
    try:
        vm = VM(kernel, args, mem=mem, modules=modules(kernel) if modules else None, warn=lambda m: None,
                guest_cpl=guest_cpl)
        vm.core.stdout_fd = w
        t = time.perf_counter()
        vm.run()
        total = time.perf_counter() - t
        vm.close()
        os.close(w)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        return total, timer.inside, timer.exits, out.decode()
    finally:
        timer.close()
        os.close(r)
        kernel.close()


def with_storage(img):
    """Modules for in_process() with `img` attached as block device `storage`."""
    def modules(kernel):
        from ukvm.modules import default_modules
        mods = default_modules(kernel.manifest())
        mods[1].attach("storage", str(img))
        return mods
    return modules


def guest_values(text: str) -> dict[str, float]:
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            vals[parts[0]] = float(parts[1])
    return vals


# --- sections ----------------------------------------------------------------------------------
def bench_start(work, floor, runs):
    hello = work / "hello.hvt"
    sh(sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello)
    sys.path.insert(0, str(ROOT / "tests"))
    import solo5_sdk
    cmds = {"ukvm": [*TENDER, "--mem=8", hello, "Hi"],
            "quiet": [*TENDER, "--mem=8", hello, "--solo5:quiet", "Hi"],
            "interp": [sys.executable, "-I", "-S", "-c", "pass"],
            "c_start": [floor, "start"]}
    if solo5_sdk.available():
        cmds["solo5-hvt"] = [solo5_sdk.SOLO5_HVT, "--mem=8", solo5_sdk.UPSTREAM / "tests" / "test_hello.hvt", "Hi"]
    got = paired_runs(cmds, runs)
    (lean, lean_cpu, lean_min), (quiet, _, _), (interp, interp_cpu, _) = got["ukvm"], got["quiet"], got["interp"]
    if "solo5-hvt" in got:
        hvt_wall, hvt_cpu, hvt_min = got["solo5-hvt"]
        row("start", "hello boot-to-exit, wall (ukvm-built on ukvm)", lean, "ms", hvt_wall,
            "solo5-hvt, Solo5's test_hello", "target <= 2.0x")
        row("start", "hello boot-to-exit, wall minimum", lean_min, "ms", hvt_min, "solo5-hvt, Solo5's test_hello")
        row("start", "hello boot-to-exit, CPU (user+sys)", lean_cpu, "ms", hvt_cpu, "solo5-hvt, Solo5's test_hello",
            "less sensitive to a loaded host")
    row("start", "hello cold start (bin/ukvm-hvt, -I -S)", lean, "ms", interp, "python3 -I -S -c pass",
        f"+{lean - interp:.1f} ms")
    row("start", "hello cold start, CPU (user+sys)", lean_cpu, "ms", interp_cpu, "python3 -I -S -c pass",
        f"+{lean_cpu - interp_cpu:.1f} ms")
    row("start", "hello cold start, --solo5:quiet", quiet, "ms", interp, "python3 -I -S -c pass",
        f"+{quiet - interp:.1f} ms")
    script = [sys.executable, "-m", "ukvm", "run", "--mem=8", hello, "Hi"]
    module_run = timed_runs(script, max(5, runs // 3))
    row("start", "hello cold start (python3 -m ukvm run)", module_run, "ms", interp, "python3 -I -S -c pass",
        "site-packages .pth files of this machine included")
    row("start", "C KVM program: create VM, one exit", got["c_start"][0], "ms", interp, "python3 -I -S -c pass")
    total, inside, exits, _ = in_process(hello, ["Hi"])
    row("start", "hello run phase: guest + exits (in KVM_RUN)", inside * 1e3, "ms", note=f"{exits} exits")
    row("start", "hello run phase: tender between exits", (total - inside) * 1e3, "ms")
    rss = statistics.median(child_rss(floor, [*TENDER, "--mem=8", hello, "Hi"]) for _ in range(5))
    interp_rss = statistics.median(child_rss(floor, [sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(5))
    row("memory", "tender peak RSS, hello", rss / 1024, "MiB", interp_rss / 1024, "interpreter alone")


def bench_hypercall(work, floor, quick):
    n = 5000 if quick else 20000
    guest = build(work, "bench_hypercall")
    exit_floor = float(sh(floor, "exits", n * 5))
    total, inside, exits, out = in_process(guest, ["--solo5:quiet", str(n)])
    vals = guest_values(out)
    per_call = vals["hypercall_ns"] - vals["loop_ns"]
    tender_per_exit = (total - inside) / exits * 1e9
    row("hypercall", "WALLTIME round trip seen by the guest", per_call, "ns", exit_floor, "C: raw `out` exit",
        "includes the guest's own CPL0 instructions")
    row("hypercall", "tender part per exit (dispatch + handler)", tender_per_exit, "ns", exit_floor,
        "C: raw `out` exit")
    row("hypercall", "raw exit + tender part", exit_floor + tender_per_exit, "ns", exit_floor, "C: raw `out` exit",
        "target <= 1.5x")


def bench_block(work, floor, quick):
    # The default build (CPL3 on ukvm): per-request guest work is native, so the figures show the
    # tender and the exit; the cpl3 section has the --cpl0 build's 1-block figure for comparison.
    guest = build(work, "bench_block", STORAGE, cpl0=False)
    img = sparse_file(work / "bench.img", 256 << 20)
    sh(floor, "pwrite", img, 8 << 20, 256)    # allocate the file's pages before anything is timed
    cases = [(512, 8 if quick else 32), (8 << 20, 1024 if quick else 4096)]
    reps = 3 if quick else 5      # page-cache copies vary a lot run to run here: medians of both sides
    for bs, mb in cases:
        w, r, fw, fr = [], [], [], []
        for _ in range(reps):
            _, _, _, out = in_process(guest, ["--solo5:quiet", str(bs), str(mb)], mem=64 << 20,
                                      modules=with_storage(img))
            vals = guest_values(out)
            w.append(mb / (vals["write_ns"] / 1e9))
            r.append(mb / (vals["read_ns"] / 1e9))
            fw.append(float(sh(floor, "pwrite", img, bs, mb)))
            fr.append(float(sh(floor, "pread", img, bs, mb)))
        w, r, fw, fr = (statistics.median(x) for x in (w, r, fw, fr))
        label = "1 block" if bs == 512 else f"{bs >> 20} MiB"   # on a 256 MiB device
        row("block", f"sequential write, {label}/request, {mb} MiB", w, "MB/s", fw, "C pwrite, same sizes",
            f"median of {reps}")
        row("block", f"sequential read, {label}/request, {mb} MiB", r, "MB/s", fr, "C pread, same sizes",
            f"median of {reps}")


UDP_CLIENT = ROOT / "bench" / "udp_client.py"


def _net_helpers():
    """The test suite's namespace helpers (tests/integration/test_net.py)."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
    import test_net
    return test_net


def ping_stats(ns, addr, count):
    """(replies, RTT ms, round trips/s) of a flood ping of `count` inside `ns`."""
    out = ns.run("ping", "-fq", "-c", count, "-w", "120", addr, timeout=150).stdout.decode()
    rtt = float(out.split("rtt min/avg/max/mdev = ")[1].split("/")[1])
    ms = float(out.split("time ")[1].split("ms")[0])
    return _net_helpers().ping_received(out), rtt, count / (ms / 1e3)


def net_figures(net_guest, tx_guest, ring: str, count: int, udp_sizes=(64, 1400), tender_cmd=None) -> dict:
    """One data path in a fresh namespace: ping RTT and flood rate, UDP echo pps per size against
    the ping/echo guest, then frames/s sent by the transmit guest. `tender_cmd` replaces
    ukvm with its own options (`ring` then does not apply)."""
    t_net = _net_helpers()
    ns = t_net.Netns()
    try:
        ns.tap("tap0", "10.0.0.1/24")
        tender = (tender_cmd or [*TENDER, "--mem=32", f"--net-ring={ring}"]) + ["--net:service0=tap0"]
        t = ns.popen(*tender, net_guest, "--solo5:quiet")
        t_net.wait_until_serving(ns)
        res = dict(zip(("replies", "rtt", "flood"), ping_stats(ns, "10.0.0.2", count)))
        for size in udp_sizes:
            out = ns.run(sys.executable, UDP_CLIENT, count, size, 32, timeout=150).stdout.decode()
            res[f"udp{size}"] = guest_values(out)["pps"]
        t.kill()
        t_net.finish(t)
        if tx_guest is not None:
            _, out = t_net.finish(ns.popen(*tender, tx_guest, "--solo5:quiet", count, 1514), timeout=150)
            res["tx"] = count / (guest_values(out)["tx_ns"] / 1e9)
        return res
    finally:
        ns.close()


def bench_net(work, floor, quick):
    t_net = _net_helpers()
    Netns, finish = t_net.Netns, t_net.finish
    count = 5000 if quick else 20000
    net_guest = build(work, "test_net", t_net.ONE)
    tx_guest = build(work, "bench_net_tx", t_net.ONE)

    # Floor: a Linux peer across a veth pair in two namespaces.
    a, b = Netns(), Netns()
    try:
        subprocess.run(["ip", "link", "add", "ukvmbench0", "netns", a.name, "type", "veth", "peer", "name",
                        "ukvmbench1", "netns", b.name], check=True, timeout=30)
        a.exec_ok("ip", "addr", "add", "10.0.0.1/24", "dev", "ukvmbench0")
        a.exec_ok("ip", "link", "set", "ukvmbench0", "up")
        b.exec_ok("ip", "addr", "add", "10.0.0.2/24", "dev", "ukvmbench1")
        b.exec_ok("ip", "link", "set", "ukvmbench1", "up")
        _, floor_rtt, floor_rate = ping_stats(a, "10.0.0.2", count)
        floor_udp = {}
        for size in (64, 1400):
            echo = b.popen(floor, "udpecho", 7, count)
            out = a.run(sys.executable, UDP_CLIENT, count, size, 32, timeout=150).stdout.decode()
            finish(echo, timeout=30)
            floor_udp[size] = guest_values(out)["pps"]
    finally:
        a.close()
        b.close()

    for ring in ("off", "on"):
        res = net_figures(net_guest, tx_guest, ring, count)
        row("net", f"ping RTT, ring {ring}", res["rtt"] * 1e3, "us", floor_rtt * 1e3, "veth Linux peer")
        row("net", f"ping flood round trips/s, ring {ring}", res["flood"], "/s", floor_rate, "veth Linux peer",
            f"{res['replies']}/{count} replies")
        for size in (64, 1400):
            pps = res[f"udp{size}"]
            row("net", f"UDP echo {size} B, window 32, ring {ring}", pps, "pkt/s", floor_udp[size],
                "veth Linux peer (C echo)", f"{pps * size * 8 / 1e6:.1f} Mbit/s each way")
        row("net", f"guest transmit 1514 B frames/s, ring {ring}", res["tx"], "/s")


def bench_cpl3(work, floor, quick):
    """The same guests built for CPL3 (default) and with --cpl0, side by side."""
    ONE = _net_helpers().ONE
    n = 5000 if quick else 20000
    per_mode = {}
    for cpl0 in (True, False):
        mode = "cpl0" if cpl0 else "cpl3"
        res = per_mode[mode] = {}
        _, _, _, out = in_process(build(work, "bench_hypercall", cpl0=cpl0), ["--solo5:quiet", str(n)])
        v = guest_values(out)
        res["walltime"] = v["hypercall_ns"] - v["loop_ns"]
        mb = 1 if cpl0 else 64
        _, _, _, out = in_process(build(work, "bench_compute", cpl0=cpl0), ["--solo5:quiet", str(mb)],
                                  mem=(mb + 16) << 20)
        res["compute"] = mb / (guest_values(out)["compute_ns"] / 1e9)
        img = sparse_file(work / "cpl.img", 64 << 20)
        blk_mb = 4 if cpl0 else 32
        blk = build(work, "bench_block", STORAGE, cpl0=cpl0)
        _, _, _, out = in_process(blk, ["--solo5:quiet", "512", str(blk_mb)], mem=64 << 20, modules=with_storage(img))
        res["block"] = blk_mb / (guest_values(out)["write_ns"] / 1e9)
        net = build(work, "test_net", ONE, cpl0=cpl0)
        tx = build(work, "bench_net_tx", ONE, cpl0=cpl0)
        for ring in ("off", "on"):
            figures = net_figures(net, tx, ring, n, udp_sizes=(64,))
            res[f"flood_{ring}"], res[f"udp_{ring}"], res[f"tx_{ring}"] = (
                figures["flood"], figures["udp64"], figures["tx"])
    c0, c3 = per_mode["cpl0"], per_mode["cpl3"]
    row("cpl3", "WALLTIME round trip seen by the guest", c3["walltime"], "ns", c0["walltime"], "same guest, --cpl0")
    row("cpl3", "compute: checksum, MB/s", c3["compute"], "MB/s", c0["compute"], "same guest, --cpl0",
        "64 MiB at CPL3, 1 MiB at CPL0")
    row("cpl3", "block write, 1 block/request", c3["block"], "MB/s", c0["block"], "same guest, --cpl0")
    for ring in ("off", "on"):
        row("cpl3", f"ping flood round trips/s, ring {ring}", c3[f"flood_{ring}"], "/s", c0[f"flood_{ring}"],
            "same guest, --cpl0")
        row("cpl3", f"UDP echo 64 B pkt/s, ring {ring}", c3[f"udp_{ring}"], "pkt/s", c0[f"udp_{ring}"],
            "same guest, --cpl0")
        row("cpl3", f"guest transmit 1514 B frames/s, ring {ring}", c3[f"tx_{ring}"], "/s", c0[f"tx_{ring}"],
            "same guest, --cpl0")


def bench_solo5(work, floor, quick):
    """Guests built by Solo5's toolchain (tests/solo5_sdk.py, no ukvm note) on ukvm under the CPL3
    supervisor, on ukvm at hvt's CPL0, and on Solo5's own solo5-hvt: one run, end to end through
    each tender's command line (what a user sees)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import solo5_sdk
    if not solo5_sdk.available():
        print(f"solo5     skipped: {solo5_sdk.MISSING}")
        return
    ONE = _net_helpers().ONE
    n = 2000 if quick else 10000
    runs = 10 if quick else 30
    tenders = {"cpl3": [*TENDER, "--x-guest-cpl=3"], "cpl0": [*TENDER, "--x-guest-cpl=0"],
               "solo5-hvt": [solo5_sdk.SOLO5_HVT]}

    def sdk(name, manifest=solo5_sdk.NO_DEVICES):
        src = ROOT / "bench" / "guests" / f"{name}.c"
        if not src.exists():
            src = ROOT / "tests" / "guests" / f"{name}.c"
        # General registers only: the same binary also runs at CPL0, where kvm_pvm has no SSE.
        return solo5_sdk.build(src, work / f"sdk-{name}.hvt", manifest, ("-O2", "-mgeneral-regs-only"))

    def values(tender, *args):
        out = subprocess.run([str(a) for a in (*tenders[tender], *args)], capture_output=True, text=True,
                             timeout=300).stdout
        return guest_values(out)

    hello_ukvm = work / "hello.hvt"
    sh(sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello_ukvm)
    up_hello = solo5_sdk.UPSTREAM / "tests" / "test_hello.hvt"
    ukvm_built = timed_runs([*TENDER, "--mem=64", hello_ukvm, "Hi"], runs)
    start = {t: timed_runs([*cmd, "--mem=64", up_hello, "Hi"], runs) for t, cmd in tenders.items()}
    row("solo5", "Solo5 hello cold start, ukvm CPL3", start["cpl3"], "ms", ukvm_built,
        "ukvm-built hello on ukvm", "target <= 1.1x")
    row("solo5", "Solo5 hello cold start, ukvm CPL0", start["cpl0"], "ms", start["cpl3"], "same, ukvm CPL3")
    row("solo5", "Solo5 hello cold start, solo5-hvt", start["solo5-hvt"], "ms", start["cpl3"], "same, ukvm CPL3")

    res = {t: {} for t in tenders}
    hc, comp, priv = sdk("bench_hypercall"), sdk("bench_compute"), sdk("bench_priv")
    blk = sdk("bench_block", STORAGE)
    img = sparse_file(work / "solo5.img", 64 << 20)
    net, tx = sdk("test_net", ONE), sdk("bench_net_tx", ONE)
    for t in tenders:
        v = values(t, "--mem=64", hc, "--solo5:quiet", n)
        res[t]["walltime"] = v["hypercall_ns"] - v["loop_ns"]
        mb = 64 if t == "cpl3" else 1        # CPL0 code is emulated here: 1 MiB takes seconds
        res[t]["compute"] = mb / (values(t, "--mem=96", comp, "--solo5:quiet", mb)["compute_ns"] / 1e9)
        res[t]["priv"] = values(t, "--mem=64", priv, "--solo5:quiet", 200)["priv_ns"]
        blk_mb = 16 if t == "cpl3" else 4
        v = values(t, "--mem=64", f"--block:storage={img}", "--", blk, "--solo5:quiet", 512, blk_mb)
        res[t]["blk_w"], res[t]["blk_r"] = blk_mb / (v["write_ns"] / 1e9), blk_mb / (v["read_ns"] / 1e9)
        figures = net_figures(net, tx, "auto", n, udp_sizes=(64,), tender_cmd=[*tenders[t], "--mem=32"])
        res[t].update(flood=figures["flood"], udp=figures["udp64"], tx=figures["tx"])
    c3, c0, up = res["cpl3"], res["cpl0"], res["solo5-hvt"]
    for key, name, unit in (("walltime", "WALLTIME round trip seen by the guest", "ns"),
                            ("compute", "compute: checksum", "MB/s"),
                            ("priv", "solo5_set_tls_base (wrmsr) per call", "ns"),
                            ("blk_w", "block write, 1 block/request", "MB/s"),
                            ("blk_r", "block read, 1 block/request", "MB/s"),
                            ("flood", "ping flood round trips/s", "/s"),
                            ("udp", "UDP echo 64 B, window 32", "pkt/s"),
                            ("tx", "guest transmit 1514 B frames/s", "/s")):
        row("solo5", f"{name}, ukvm CPL3", c3[key], unit, c0[key], "same binary, ukvm CPL0")
        row("solo5", f"{name}, solo5-hvt", up[key], unit, c3[key], "same binary, ukvm CPL3")


PATHS = {   # floor.c's `paths` names: what each is, and whether the VMM's user space sees it
    "out_bitmap": "`out` through the TSS I/O bitmap", "out": "`out`",
    "mmio_write": "MMIO write, no memory slot", "mmio_read": "MMIO read, no memory slot",
    "out_ioeventfd": "`out` bound to an ioeventfd (no user exit)",
    "mmio_ioeventfd": "MMIO write bound to an ioeventfd (no user exit)",
    "hlt": "`hlt` (KVM_EXIT_HLT)", "hlt_gp_handler_exit": "`hlt` -> #GP -> CPL0 handler -> `out`, iretq",
    "ud2_handler_exit": "`ud2` -> #UD -> CPL0 handler -> `out`, iretq",
    "int80_handler_exit": "`int 0x80` -> CPL0 handler -> `out`, iretq",
    "syscall_handler_exit": "`syscall` -> CPL0 handler -> `out`, sysretq",
    "hlt_gp_handler": "`hlt` -> #GP -> CPL0 handler, iretq (no exit)",
    "int81_handler": "`int 0x81` -> CPL0 handler, iretq (no exit)",
    "syscall_handler": "`syscall` -> CPL0 handler, sysretq (no exit)",
}


def bench_paths(work, floor, quick):
    """Every way a guest reaches the VMM on this host, timed in C (floor.c `paths`): each path
    at CPL3 against `out` through the TSS I/O bitmap at CPL3 (the path hypercalls take), and at
    CPL0 against the same loop without the exit (CPL0 code is emulated on kvm_pvm)."""
    n = 1000 if quick else 3000
    got = {}
    for line in sh(floor, "paths", n).splitlines():
        name, cpl, low, med = line.split()
        got[name, int(cpl)] = None if low == "unsupported" else (float(low), float(med))
    base = got["out_bitmap", 3]
    for (name, cpl), ns in got.items():
        if ns is None:
            row("paths", f"CPL{cpl} {name}", 0.0, "ns", note=f"{PATHS[name]}: not supported by this host's KVM")
        elif name == "loop_alone":
            row("paths", f"CPL{cpl} loop alone (dec, jnz), min", ns[0], "ns", note=f"median {ns[1]:.0f}")
        elif cpl == 3:
            row("paths", f"CPL3 {name}, min", ns[0], "ns", base[0], "CPL3 `out` via the I/O bitmap, min",
                f"{PATHS[name]}; medians {ns[1]:.0f} / {base[1]:.0f} ns")
        else:
            loop = got["loop_alone", 0]
            row("paths", f"CPL0 {name}, min", ns[0], "ns", loop[0], "CPL0 loop alone (emulated), min",
                f"{PATHS[name]}; medians {ns[1]:.0f} / {loop[1]:.0f} ns")


def bench_exits(work, floor, quick):
    """Issue 12's table: the same Solo5-built binaries (built with Solo5's bindings, CPL0 code)
    on ukvm and on solo5-hvt, end to end through each tender's command line, one exit per
    operation; next to the floors of one KVM_RUN round trip in C and in Python."""
    sys.path.insert(0, str(ROOT / "tests"))
    import solo5_sdk
    if not solo5_sdk.available():
        print(f"exits     skipped: {solo5_sdk.MISSING}")
        return
    t_net = _net_helpers()
    reps = 3 if quick else 7
    n = 20000 if quick else 100000
    up = [solo5_sdk.SOLO5_HVT]
    ukvm = [*TENDER, "--x-guest-cpl=0"]     # solo5-hvt runs these guests at CPL0 too
    flags = ("-O2", "-mgeneral-regs-only")   # CPL0 code on kvm_pvm: no SSE

    def sdk(name, manifest=solo5_sdk.NO_DEVICES):
        return solo5_sdk.build(ROOT / "bench" / "guests" / f"{name}.c", work / f"x-{name}.hvt", manifest, flags)

    def paired(cmds: dict, key: str, ns=None) -> dict:
        """Median of `key` over `reps` interleaved runs of each command (same binary)."""
        got = {name: [] for name in cmds}
        for _ in range(reps):
            for name, cmd in cmds.items():
                runner = ns.run if ns else (lambda *c, **kw: subprocess.run([str(x) for x in c], capture_output=True,
                                                                              text=True, timeout=300))
                p = runner(*cmd, timeout=300)
                out = p.stdout if isinstance(p.stdout, str) else p.stdout.decode()
                got[name].append(guest_values(out)[key])
        return {name: statistics.median(v) for name, v in got.items()}

    # Floors: one KVM_RUN round trip, from C and from Python (fcntl.ioctl, the tender's call).
    c_exit = statistics.median(float(sh(floor, "exits", n)) for _ in range(reps))
    py_exit = statistics.median(float(sh(sys.executable, ROOT / "bench" / "pyfloor.py", n)) for _ in range(reps))
    py_touch = statistics.median(float(sh(sys.executable, ROOT / "bench" / "pyfloor.py", n // 4, 1000))
                                 for _ in range(reps))
    c_touch = statistics.median(float(sh(floor, "exits", n // 4, 1000)) for _ in range(reps))
    row("exits", "KVM_RUN round trip, Python (the tender's call)", py_exit, "ns", c_exit, "C, same loop")
    row("exits", "same, 1,000 objects touched between exits", py_touch, "ns", py_exit, "Python, nothing touched",
        "inside KVM_RUN only")
    row("exits", "C, 1,000 pages touched between exits", c_touch, "ns", c_exit, "C, nothing touched",
        "inside KVM_RUN only")

    hc = sdk("bench_hypercall")
    r = paired({"ukvm": [*ukvm, "--mem=64", hc, "--solo5:quiet", n], "up": [*up, "--mem=64", hc, "--solo5:quiet", n]},
               "hypercall_ns")
    row("exits", f"WALLTIME round trip, {n} calls", r["ukvm"], "ns", r["up"], "solo5-hvt, same binary",
        "target <= 1.1x (issue 20)")
    total, inside, exits, out = in_process(hc, ["--solo5:quiet", str(n)], mem=64 << 20, guest_cpl="0")
    row("exits", "  of which inside KVM_RUN (guest + exit)", inside / exits * 1e9, "ns", c_exit, "C raw exit")
    row("exits", "  of which tender between exits", (total - inside) / exits * 1e9, "ns")

    raw_blk = sdk("bench_raw", STORAGE)
    img = sparse_file(work / "exits.img", 64 << 20)
    mb = 64 if quick else 256
    for verb in ("write", "read"):
        args = ["--mem=64", f"--block:storage={img}", "--", raw_blk, "--solo5:quiet", "block", verb, 65536, mb]
        r = paired({"ukvm": [*ukvm, *args], "up": [*up, *args]}, f"block_{verb}_ns")
        row("exits", f"raw BLOCK_{verb.upper()}, 64 KiB per hypercall", mb / (r["ukvm"] / 1e9), "MB/s",
            mb / (r["up"] / 1e9), "solo5-hvt, same binary", "target >= 1.0x")

    one_nic = t_net.ONE
    raw_net = solo5_sdk.build(ROOT / "bench" / "guests" / "bench_raw.c", work / "x-rawnet.hvt", one_nic, flags)
    ns = t_net.Netns()
    try:
        ns.tap("tap0", "10.0.0.1/24")
        frames = n // 4
        args = ["--mem=64", "--net:service0=tap0", "--", raw_net, "--solo5:quiet", "netwrite", frames, 1514]
        r = paired({"ukvm": [*ukvm, *args], "up": [*up, *args]}, "netwrite_ns", ns=ns)
        row("exits", "raw NET_WRITE, 1514 B frames/s", frames / (r["ukvm"] / 1e9), "/s", frames / (r["up"] / 1e9),
            "solo5-hvt, same binary", "target >= 1.0x")
    finally:
        ns.close()
    net = solo5_sdk.build(ROOT / "tests" / "guests" / "test_net.c", work / "x-net.hvt", one_nic, flags)
    count = 5000 if quick else 20000
    rates = {}
    for name, cmd in (("ukvm", [*ukvm, "--mem=32", "--net-ring=off"]), ("up", [*up, "--mem=32"])):
        rates[name] = net_figures(net, None, "off", count, udp_sizes=(), tender_cmd=cmd)["flood"]
    row("exits", "ping flood round trips/s (ukvm: hypercalls)", rates["ukvm"], "/s", rates["up"],
        "solo5-hvt, same binary (its ring)", "target >= 1.0x")

    hello = solo5_sdk.UPSTREAM / "tests" / "test_hello.hvt"
    rss = {name: statistics.median(child_rss(floor, [*cmd, "--mem=64", hello, "Hi"]) for _ in range(5))
           for name, cmd in (("ukvm", TENDER), ("up", up))}
    interp_rss = statistics.median(child_rss(floor, [sys.executable, "-I", "-S", "-c", "pass"]) for _ in range(5))
    row("exits", "tender peak RSS, Solo5 hello", rss["ukvm"] / 1024, "MiB", rss["up"] / 1024, "solo5-hvt")
    row("exits", "same", rss["ukvm"] / 1024, "MiB", interp_rss / 1024, "interpreter alone", "target <= +2 MiB")


def _percentile(sorted_values, q) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _http_load(ns, host, n, conc=None, port=80, mirage=False) -> dict:
    """The test suite's HTTP client inside `ns`: (p50 ms, p99 ms, requests/s)."""
    args = ["seq", n, "/b/"] if conc is None else ["conc", n, conc, "/b/"]
    out = ns.run(sys.executable, ROOT / "tests" / "integration" / "http_client.py", *(["--mirage"] if mirage else []),
                 host, port, *args, timeout=900)
    res = json.loads(out.stdout)
    assert res["ok"] == n, res["errors"]
    lat = sorted(res["seconds"])
    rate = n / (sum(lat) if conc is None else res["elapsed"])
    return {"p50": _percentile(lat, 0.5) * 1e3, "p99": _percentile(lat, 0.99) * 1e3, "rps": rate}


def _long_running(ns, tender, image, n, conc, nic="service0", port=80, guest_args=(), mirage=False):
    """One server for every request: sequential and concurrent figures."""
    t_net = _net_helpers()
    proc = ns.popen(*tender, f"--net:{nic}=tap0", image, *guest_args)
    try:
        for _ in range(600):              # bounded: up to 60 s for the first answer
            if ns.run(sys.executable, "-c", f"import socket;socket.create_connection(('10.0.0.2',{port}),timeout=0.5)",
                      timeout=30).returncode == 0:
                break
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            time.sleep(0.1)
        return (_http_load(ns, "10.0.0.2", n, port=port, mirage=mirage),
                _http_load(ns, "10.0.0.2", n, conc, port=port, mirage=mirage) if conc else None)
    finally:
        proc.kill()
        t_net.finish(proc)


COLD_PROBE = r"""
import socket, subprocess, sys, time
t0 = time.perf_counter()
tender = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
out = b""
while b"httpd: listening" not in out:         # bounded by the tender: it either listens or exits
    line = tender.stdout.readline()
    assert line, out
    out += line
s = socket.create_connection(("10.0.0.2", 80), timeout=10)
s.sendall(b"GET /cold HTTP/1.0\r\n\r\n")
data = b""
while (chunk := s.recv(65536)):
    data += chunk
took = (time.perf_counter() - t0) * 1e3
tender.kill()
tender.wait(timeout=30)
assert data.startswith(b"HTTP/1.0 200"), data[:80]
print(took)
"""


def _cold_per_request(ns, image, n) -> list[float]:
    """What one does without snapshots: a new tender per request, the request sent as soon as the
    guest says it listens; ms from the tender's start to the complete answer."""
    return sorted(float(ns.run(sys.executable, "-c", COLD_PROBE, LAUNCHER, "--mem=64", "--net:service0=tap0",
                               image, timeout=120).stdout.decode().split()[-1]) for _ in range(n))


# serve's own network when it alternates with a long-running server on tap0's 10.0.0.0/24.
SERVE_NET = ("10.9.0.1/24", "10.9.0.2")


def _serve_figures(ns, image, n, conc, pool=4, port=80, guest_args=(), mirage=False, net=None):
    """`ukvm serve` as users run it: sequential (and concurrent) load, then its drain summary.
    With one clone, each reset runs alone: the next connection waits for it. `net`: (host
    IP/prefix, guest IP) instead of serve's default 10.0.0.0/24 (the httpd told its address)."""
    where = [f"--guest=10.0.0.2:{port}"]
    if net is not None:
        where = [f"--host-ip={net[0]}", f"--guest={net[1]}:{port}"]
        guest_args = (*guest_args, f"--ipv4={net[1]}/{net[0].split('/')[1]}", f"--ipv4-gateway={net[0].split('/')[0]}")
    proc = ns.popen(sys.executable, "-m", "ukvm", "serve", f"--pool={pool}", "--mem=64", "--listen=127.0.0.1:80",
                    *where, "--", image, *guest_args)
    out = b""
    try:
        while b"ukvm serve: listening" not in out:
            line = proc.stdout.readline()
            assert line, out
            out += line
        seq = _http_load(ns, "127.0.0.1", n, mirage=mirage)
        par = _http_load(ns, "127.0.0.1", n, conc, mirage=mirage) if conc else None
    finally:
        proc.terminate()
        out += proc.communicate(timeout=60)[0]
    m = re.search(rb"reset p50 (\d+) us, p99 (\d+) us; each clone keeps (\d+) KiB", out)
    assert m, out
    return seq, par, {"reset_p50": int(m.group(1)), "reset_p99": int(m.group(2)), "clone_kib": int(m.group(3))}


def _density(ns, image, clones, mem, confined=True) -> dict:
    """`ukvm serve --pool=CLONES`: seconds from the snapshot to every clone parked (the
    "listening" line comes after the last clone's thread started) and the host memory they
    took: what its memory cgroup (v1, made here) was charged, KVM's kernel memory included;
    MemAvailable before against after (other users of a shared host move it); serve's RSS. Confined (the
    filter's size follows the pieces of the clones' fd sets, not their number: docs/security.md),
    or with --x-no-sandbox for the baseline."""
    def available_kib():
        with open("/proc/meminfo") as f:
            return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1))
    before = available_kib()
    cgroup = Path(f"/sys/fs/cgroup/memory/ukvm-density-{os.getpid()}-{int(confined)}")
    join = cgroup.parent.is_dir()
    if join:
        cgroup.mkdir()
    proc = ns.popen(sys.executable, "-m", "ukvm", "serve", f"--pool={clones}", f"--mem={mem}",
                    *([] if confined else ["--x-no-sandbox"]), "--listen=127.0.0.1:80",
                    f"--host-ip={SERVE_NET[0]}", f"--guest={SERVE_NET[1]}:80", "--", image,
                    f"--ipv4={SERVE_NET[1]}/24", f"--ipv4-gateway={SERVE_NET[0].split('/')[0]}")
    out, snapped = b"", None
    try:
        if join:        # from here (`ip netns exec` becomes serve; the netns's /sys has no cgroups)
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        while b"ukvm serve: listening" not in out:
            line = proc.stdout.readline()
            assert line, out
            out += line
            if b"snapshot taken" in line:
                snapped = time.perf_counter()
        took = time.perf_counter() - snapped
        time.sleep(1)                      # the last clones reach their first POLL
        used = before - available_kib()
        charged = int((cgroup / "memory.usage_in_bytes").read_text()) >> 10 if join else None
        with open(f"/proc/{proc.pid}/status") as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        served = _http_load(ns, "127.0.0.1", 20)        # and they serve
    finally:
        proc.terminate()
        proc.communicate(timeout=300)
        if join:
            cgroup.rmdir()
    return {"seconds": took, "kib": charged if charged is not None else used, "available_kib": used, "rss_kib": rss,
            "p50": served["p50"]}


def _fresh_against_long(ns, images: dict, n, conc, rounds) -> dict:
    """serve (fresh clone per request) and the same image long-running under ukvm, alternated
    A/B/A/B in rounds, so that the shared host's load hits both alike: medians per figure."""
    got: dict = {}
    for _ in range(rounds):
        for name, image in images.items():
            seq, par, _ = _serve_figures(ns, image, n, conc, net=SERVE_NET)
            long_seq, long_par = _long_running(ns, [LAUNCHER, "--mem=64"], image, n, conc)
            for kind, figures in (("fresh", seq), ("fresh_conc", par), ("long", long_seq), ("long_conc", long_par)):
                for q, v in figures.items():
                    got.setdefault((name, kind, q), []).append(v)
    return {key: statistics.median(v) for key, v in got.items()}


def density_rows(density: dict, density_open: dict) -> None:
    """Issue 20's density, confined, against the same pool with --x-no-sandbox."""
    per_gib = {k: 1000 * (1 << 20) / max(d["kib"], 1) for k, d in (("confined", density), ("open", density_open))}
    row("serve", "time to 1,000 parked clones, confined", density["seconds"], "s", density_open["seconds"],
        "--x-no-sandbox", note=f"--mem=16; then p50 {density['p50']:.1f} ms")
    row("serve", "parked clones per GiB of host memory, confined", per_gib["confined"], "/GiB", per_gib["open"],
        "--x-no-sandbox", note=f"charged {density['kib'] >> 10} MiB for 1,000 (MemAvailable fell "
                               f"{density['available_kib'] >> 10} MiB, serve's RSS {density['rss_kib'] >> 10} MiB)")


def bench_serve(work, quick):
    """`ukvm serve` (a fresh clone per request) against the same lwIP httpd as one long-running
    server, a cold `ukvm run` per request and Solo5's toolchain build on solo5-hvt."""
    sys.path[:0] = [str(ROOT / "examples" / "httpd"), str(ROOT / "tests")]
    import build as httpd_build
    import solo5_sdk
    image = work / "httpd.hvt"
    sh(sys.executable, ROOT / "examples" / "httpd" / "build.py", "-o", image)
    n, conc = (300, 16) if quick else (1000, 16)
    t_net = _net_helpers()
    ns = t_net.Netns()
    try:
        seq, par, serve = _serve_figures(ns, image, n, conc)
        _, _, alone = _serve_figures(ns, image, n // 2, None, pool=1)
        mirage_args = ("--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1")
        if MIRAGE_HTTP.exists():         # issue 22: a MirageOS unikernel, served (before tap0 takes 10.0.0.0/24)
            m_seq, m_par, _ = _serve_figures(ns, MIRAGE_HTTP, n, conc, port=8080, guest_args=mirage_args, mirage=True)
            # Against lwIP in alternated runs, so that the shared host's load hits both alike.
            alternated = [(_serve_figures(ns, image, n // 3, None)[0],
                           _serve_figures(ns, MIRAGE_HTTP, n // 3, None, port=8080, guest_args=mirage_args,
                                          mirage=True)[0]) for _ in range(3)]
        ns.tap("tap0", "10.0.0.1/24")
        long_seq, long_conc = _long_running(ns, [LAUNCHER, "--mem=64"], image, n, conc)
        long_hc, _ = _long_running(ns, [LAUNCHER, "--mem=64", "--net-ring=off"], image, n, None)
        cold = _cold_per_request(ns, image, 10 if quick else 30)
        peer = None
        images = {"ukvm-built": image}
        if solo5_sdk.available():
            lwip = httpd_build.fetch_lwip()
            sdk_image = solo5_sdk.build(httpd_build.sources(lwip, solo5_toolchain=True), work / "httpd-solo5.hvt",
                                        (ROOT / "examples" / "httpd" / "manifest.json").read_text(),
                                        ["-O2", "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
                                         *httpd_build.include_flags(lwip)])   # solo5-hvt runs it at CPL0
            peer, _ = _long_running(ns, [solo5_sdk.SOLO5_HVT, "--mem=64"], sdk_image, 20, None)
            images["Solo5-built"] = sdk_image
        # Issue 20's targets, both builds, against the same image long-running, alternated.
        rounds = 2 if quick else 3
        ab = _fresh_against_long(ns, images, n // 3, conc, rounds)
        density = _density(ns, image, 1000, 16)
        density_open = _density(ns, image, 1000, 16, confined=False)
        mirage = None
        if MIRAGE_HTTP.exists():         # the same MirageOS unikernel long-running
            m_long, _ = _long_running(ns, [LAUNCHER, "--mem=64"], MIRAGE_HTTP, n, None, nic="service", port=8080,
                                      guest_args=mirage_args, mirage=True)
            mirage = m_seq, m_par, m_long, alternated
    finally:
        ns.close()
    row("serve", "fresh clone per request: p50", seq["p50"], "ms", long_seq["p50"], "long-running server p50")
    row("serve", "fresh clone per request: p99", seq["p99"], "ms", long_seq["p99"], "long-running server p99")
    row("serve", "fresh clone per request: sequential", seq["rps"], "req/s", long_seq["rps"], "long-running server")
    row("serve", f"fresh clone per request: {conc} at once", par["rps"], "req/s", long_conc["rps"],
        "long-running server", note=f"p50 {par['p50']:.1f} ms, p99 {par['p99']:.1f} ms")
    row("serve", "fresh clone per request: p50", seq["p50"], "ms", long_hc["p50"],
        "long-running, hypercall path (no ring)")
    row("serve", "fresh clone per request: p50", seq["p50"], "ms", statistics.median(cold),
        "cold ukvm run per request", note=f"cold p99 {_percentile(cold, 0.99):.1f} ms")
    row("serve", "reset alone (one clone): p50", alone["reset_p50"], "us", 100, "target")
    row("serve", "reset alone (one clone): p99", alone["reset_p99"], "us", 100, "target")
    row("serve", "reset under load (4 clones): p50", serve["reset_p50"], "us", 100, "target",
        note=f"p99 {serve['reset_p99']} us")
    row("serve", "memory kept by each idle clone", serve["clone_kib"], "KiB", None, "",
        note="its private copies of the pages it ever wrote")
    if peer is not None:
        row("serve", "fresh clone per request: p50", seq["p50"], "ms", peer["p50"],
            "Solo5-built httpd on solo5-hvt, long-running")
    note = f"median of {rounds} alternated runs of {n // 3}"
    for name in images:
        for q, target in (("p50", 1.0), ("p99", 3.0)):
            row("serve", f"{name}, fresh clone, sequential: {q}", ab[(name, "fresh", q)], "ms",
                ab[(name, "long", q)], "same image long-running", f"target <= {target:.0f} ms; {note}")
            row("serve", f"{name}, fresh clone, {conc} at once: {q}", ab[(name, "fresh_conc", q)], "ms",
                ab[(name, "long_conc", q)], "same image long-running", f"target <= {target:.0f} ms; {note}")
        row("serve", f"{name}, fresh clone, sequential", ab[(name, "fresh", "rps")], "req/s",
            ab[(name, "long", "rps")], "same image long-running", f"target >= 0.5x; {note}")
        row("serve", f"{name}, fresh clone, {conc} at once", ab[(name, "fresh_conc", "rps")], "req/s",
            ab[(name, "long_conc", "rps")], "same image long-running", f"target >= 0.5x; {note}")
    density_rows(density, density_open)
    if mirage is None:
        print(f"serve     MirageOS figures skipped: {MIRAGE_HTTP} is absent", flush=True)
        return
    m_seq, m_par, m_long, alternated = mirage
    for q in ("p50", "p99"):
        lwip_q = statistics.median(a[q] for a, _ in alternated)
        mirage_q = statistics.median(b[q] for _, b in alternated)
        row("serve", f"MirageOS, fresh clone per request: {q}", mirage_q, "ms", lwip_q, "lwIP example, same",
            note=f"median of 3 alternated runs of {n // 3}")
    row("serve", f"MirageOS, fresh clone: {conc} at once", m_par["rps"], "req/s", par["rps"], "lwIP example, same",
        note=f"p50 {m_par['p50']:.1f} ms, p99 {m_par['p99']:.1f} ms")
    row("serve", "MirageOS, fresh clone per request: p50", m_seq["p50"], "ms", m_long["p50"],
        "MirageOS long-running (ukvm run)")
    row("serve", "MirageOS, fresh clone per request: p99", m_seq["p99"], "ms", m_long["p99"],
        "MirageOS long-running (ukvm run)")



def _pod_start(cri, handler, image, name, logs, until_output) -> float:
    """ms from CreateContainer to the container's first output (or RUNNING, for pause)."""
    from cri_client import CriClient
    config = CriClient.sandbox_config(name, f"uid-{name}", "bench", str(logs))
    sid = cri.run_pod_sandbox(config, handler)
    try:
        log = logs / f"{name}.log"
        t0 = time.perf_counter()
        cid = cri.create_container(sid, config, name, image, f"{name}.log")
        cri.start_container(cid)
        deadline = time.monotonic() + 60
        while not (log.exists() and log.stat().st_size > 0 if until_output else cri.container_state(cid)[0] == 1):
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.002)
        took = (time.perf_counter() - t0) * 1e3
        cri.stop_container(cid, 5)
        cri.remove_container(cid)
        return took
    finally:
        cri.stop_pod_sandbox(sid)
        cri.remove_pod_sandbox(sid)


def bench_kubernetes(work, quick):
    """CRI CreateContainer+StartContainer to the first guest output of a ukvm pod (hello), next to
    runc's for a pause container (to RUNNING: pause prints nothing), through Debian's containerd."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
    from containerd_env import PAUSE_IMAGE, Containerd, missing
    from cri_client import CriClient
    from ukvm.oci.image import write_archive
    if missing():
        print(f"kubernetes: skipped: {missing()}")
        return
    hello = work / "k8s-hello.hvt"
    sh(sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello)
    sh(sys.executable, "-m", "ukvm", "oci", "build", hello, "-o", work / "hello.tar", "--tag", "ukvm-hello:1")
    pause = work / "pause"
    sh("gcc", "-static", "-O2", "-o", pause, ROOT / "tests" / "oci" / "pause.c")
    write_archive(str(work / "pause.tar"), [("/pause", pause.read_bytes(), 0o755)], {"Entrypoint": ["/pause"]}, {},
                  PAUSE_IMAGE.split("/")[-1])
    (work / "ctrd").mkdir()
    env = Containerd(work / "ctrd")
    try:
        for tar in ("hello.tar", "pause.tar"):
            env.ctr("images", "import", work / tar, namespace="k8s.io", timeout=300)
        cri = CriClient(env.sock)
        logs = work / "k8s-logs"
        logs.mkdir()
        n = 3 if quick else 10
        ukvm_ms, runc_ms = [], []
        for i in range(n):          # interleaved, so both see the same machine
            ukvm_ms.append(_pod_start(cri, "ukvm", "docker.io/library/ukvm-hello:1", f"u{i}", logs, True))
            runc_ms.append(_pod_start(cri, "", PAUSE_IMAGE, f"r{i}", logs, False))
        cri.close()
    finally:
        env.close()
    row("k8s", "CRI create+start to first guest output", statistics.median(ukvm_ms), "ms",
        statistics.median(runc_ms), "runc: pause container to RUNNING",
        note=f"ukvm min {min(ukvm_ms):.0f}, runc min {min(runc_ms):.0f}")


# --- observe: what the debugging tools cost (docs/debugging.md) -------------------------------
def _guest_value(cmd, key, stderr_into=None) -> float:
    p = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, timeout=600)
    if stderr_into is not None:
        stderr_into.append(p.stderr)
    return guest_values(p.stdout)[key]


def _without(*names):
    """Modules for in_process(): the default ones minus those named."""
    def modules(kernel):
        from ukvm.modules import default_modules
        return [m for m in default_modules(kernel.manifest()) if m.name not in names]
    return modules


def _with_option(option):
    def modules(kernel):
        from ukvm.modules import default_modules
        mods = default_modules(kernel.manifest())
        assert any(m.handle_arg(option) for m in mods)
        return mods
    return modules


def _under_gdb(cmd) -> str:
    """Run `cmd` (a tender with --gdb --gdb-port=0) with a minimal debugger that only says
    `continue` and waits for the exit; returns the tender's output."""
    import socket
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + 60
    while not (m := re.search(rb"target remote localhost:(\d+)", out)) and time.monotonic() < deadline:
        out += proc.stdout.read1(4096)
    with socket.create_connection(("127.0.0.1", int(m[1])), timeout=600) as sock:
        reply = b""
        while b"#" not in reply:
            reply += sock.recv(4096)                     # the first stop, S05
        sock.sendall(b"+$c#63")
        while b"$W" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        sock.sendall(b"+")
    rest, _ = proc.communicate(timeout=600)
    return (out + rest).decode()


def bench_observe(work, quick):
    """--profile on a compute guest, --trace off and on, a CPL3 guest under --gdb: each against
    the same guest without the tool, runs alternated so that the shared host's load hits both."""
    from ukvm.modules.profile import DEFAULT_RATE
    runs = 3 if quick else 7
    spin = build(work, "bench_spin", cpl0=False)
    rounds = "300" if quick else "1000"
    base, prof, said = [], [], []
    for _ in range(runs):
        base.append(_guest_value([LAUNCHER, "--mem=32", spin, "--solo5:quiet", rounds], "spin_ns"))
        prof.append(_guest_value([LAUNCHER, "--mem=32", f"--profile={work}/spin.folded", spin, "--solo5:quiet",
                                  rounds], "spin_ns", said))
    row("observe", f"compute guest under --profile ({DEFAULT_RATE} Hz)", statistics.median(prof) / 1e6, "ms",
        statistics.median(base) / 1e6, "same guest, no --profile", f"CPL3, {rounds}M rounds, median of {runs}")
    per_sample = statistics.median(float(m) for m in re.findall(r"\((\d+) us a sample\)", "".join(said)))
    row("observe", "--profile: tender time per sample", per_sample, "us", None, "",
        f"x {DEFAULT_RATE} Hz = {per_sample * DEFAULT_RATE / 1e4:.2f}% of the guest's time, plus one EINTR exit a sample")

    base, debugged = [], []
    for _ in range(runs):
        base.append(_guest_value([LAUNCHER, "--mem=32", spin, "--solo5:quiet", rounds], "spin_ns"))
        debugged.append(guest_values(_under_gdb([LAUNCHER, "--mem=32", "--gdb", "--gdb-port=0", spin,
                                                 "--solo5:quiet", rounds]))["spin_ns"])
    row("observe", "compute guest under --gdb, no breakpoints", statistics.median(debugged) / 1e6, "ms",
        statistics.median(base) / 1e6, "same guest, no --gdb", f"CPL3 (ukvm build), median of {runs}")

    hc = build(work, "bench_hypercall", cpl0=False)
    n = "20000" if quick else "100000"
    off, absent, on = [], [], []
    for _ in range(runs):
        absent.append(guest_values(in_process(hc, ["--solo5:quiet", n], modules=_without("trace"))[3])["hypercall_ns"])
        off.append(guest_values(in_process(hc, ["--solo5:quiet", n])[3])["hypercall_ns"])
        on.append(guest_values(in_process(hc, ["--solo5:quiet", n],
                                          modules=_with_option("--trace=/dev/null"))[3])["hypercall_ns"])
    row("observe", "WALLTIME round trip, trace module present, off", statistics.median(off), "ns",
        statistics.median(absent), "no trace module", f"CPL3, median of {runs}")
    row("observe", "WALLTIME round trip, --trace=/dev/null", statistics.median(on), "ns",
        statistics.median(absent), "no trace module", "one JSON line a hypercall")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs and smaller transfers")
    ap.add_argument("--only", default="paths,start,hypercall,block,net,cpl3,solo5,exits,serve,kubernetes,observe")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    args = ap.parse_args()
    from ukvm.toolchain.supervisor_image import ensure_in_tree
    ensure_in_tree()      # this checkout's supervisor image, as building the package gives it
    with tempfile.TemporaryDirectory(prefix="ukvm-bench-") as tmp:
        work = Path(tmp)
        floor = work / "floor"
        sh("gcc", "-O2", "-o", floor, ROOT / "bench" / "floor.c")
        print(f"{'section':9} {'figure':42} {'ukvm':>12} {'unit':8} {'floor':>12} {'ratio':>8}  floor is")
        sections = {"paths": lambda: bench_paths(work, floor, args.quick),
                    "start": lambda: bench_start(work, floor, 10 if args.quick else 30),
                    "hypercall": lambda: bench_hypercall(work, floor, args.quick),
                    "block": lambda: bench_block(work, floor, args.quick),
                    "net": lambda: bench_net(work, floor, args.quick),
                    "cpl3": lambda: bench_cpl3(work, floor, args.quick),
                    "solo5": lambda: bench_solo5(work, floor, args.quick),
                    "exits": lambda: bench_exits(work, floor, args.quick),
                    "serve": lambda: bench_serve(work, args.quick),
                    "kubernetes": lambda: bench_kubernetes(work, args.quick),
                    "observe": lambda: bench_observe(work, args.quick)}
        for name in args.only.split(","):
            sections[name]()
    # Sections not run this time keep their recorded rows.
    ran = {r["section"] for r in ROWS}
    old = json.loads(Path(args.json).read_text()).get("rows", []) if Path(args.json).exists() else []
    rows = [r for r in old if r["section"] not in ran] + ROWS
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "host": os.uname().release,
                                           "kvm_pvm": os.path.exists("/sys/module/kvm_pvm"), "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
