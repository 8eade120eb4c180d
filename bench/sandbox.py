"""bench/sandbox.py: what confinement costs `ukvm serve` (docs/security.md, "What it costs").

The lwIP httpd example served confined (the default) and with --x-no-sandbox, in alternating
rounds in the same invocation (so both see the same machine load), each round a fresh server in
the same network namespace: N sequential requests, then N with C at once. Prints one JSON object:
per variant the median over rounds of p50, p99 (ms) and requests/s, and the ratios confined /
unconfined. Run as root:  nice -n 19 python3 bench/sandbox.py [--rounds 3] [-n 500] [-c 16]
"""
import argparse
import json
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


def one_round(ns, image, confined: bool, n: int, conc: int) -> dict:
    flags = [] if confined else ["--x-no-sandbox"]
    proc = ns.popen(sys.executable, "-m", "ukvm", "serve", "--pool=4", "--mem=64", "--listen=127.0.0.1:8080",
                    "--guest=10.0.0.2:80", "--host-ip=10.0.0.1/24", *flags, image)
    out = b""
    try:
        deadline = time.monotonic() + 120
        while b"ukvm serve: listening" not in out:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, out
            out += line
        rss = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS"))
        seq = load(ns, n)
        par = load(ns, n, conc)
    finally:
        proc.terminate()
        out += proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out.decode(errors="replace")
    return {"seq": seq, "conc": par, "rss_kib": rss}


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
                        for kind in ("seq", "conc") for k in ("p50", "p99", "rps")}
        result[name]["rss_kib"] = statistics.median(r["rss_kib"] for r in rs)
    result["ratio"] = {k: result["confined"][k] / result["unconfined"][k] for k in result["confined"]}
    result["setup"] = {"rounds": args.rounds, "n": args.n, "concurrency": args.c, "timed": sys.executable}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
