"""bench/serve_probe.py: `ukvm serve`'s figures from inside a network namespace (bench/run.py).

    python3 serve_probe.py APP.hvt POOL REQUESTS CONCURRENCY

Runs a Server in this process (its event loop in a thread), drives it with the test suite's HTTP
client as a separate process (sequential, then CONCURRENCY at once), and prints one JSON object:
client-side latencies, reset times, and memory: the process RSS and the pages each clone keeps.
"""
import json
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from ukvm.serve import Server  # noqa: E402

CLIENT = ROOT / "tests" / "integration" / "http_client.py"


def client(*args) -> dict:
    out = subprocess.run([sys.executable, CLIENT, "127.0.0.1", "8080", *map(str, args)], capture_output=True,
                         text=True, timeout=900, check=True).stdout
    return json.loads(out)


def rss_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))


def main() -> None:
    app, pool, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    server = Server(app, [], listen=("127.0.0.1", 8080), guest=("10.0.0.2", 80), pool=pool, mem=64 << 20,
                    log=lambda m: None)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        rss0 = rss_kib()
        seq = client("seq", n, "/seq/")
        par = client("conc", n, conc, "/conc/")
        resets = sorted(server.reset_seconds)
        kept = [len(c.vm._restore_pages) * 4 for c in server.clones]
        print(json.dumps({
            "seq_ok": seq["ok"], "seq": sorted(seq["seconds"]), "conc_ok": par["ok"], "conc_elapsed": par["elapsed"],
            "conc": sorted(par["seconds"]), "reset_p50": statistics.median(resets),
            "reset_p99": resets[int(len(resets) * 0.99)], "rss_before": rss0, "rss_after": rss_kib(),
            "clone_kib": statistics.median(kept), "served": sorted(set(seq["served"]) | set(par["served"]))}))
    finally:
        server.request_drain()
        loop.join(timeout=60)
        server.close()


if __name__ == "__main__":
    main()
