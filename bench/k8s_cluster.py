#!/usr/bin/env python3
"""bench/k8s_cluster.py: unikernel pods under a real kubelet, next to runc pods in the same run.

    python3 bench/k8s_cluster.py [--quick] [--json bench/k8s_results.json]

One single-node cluster (tests/integration/k8s_cluster.py; binaries from scripts/build-k8s.sh).
Figures, medians over interleaved rounds so that both kinds see the same machine:
- static pod start: manifest written to kubelet's staticPodPath -> the container's first output
  in its CRI log, and -> the first HTTP answer on the pod IP; the lwIP example under ukvm-oci
  against a static C HTTP server under runc;
- Deployment deletion (2 pods, ready): `kubectl delete` -> no pod left in the API;
- `ukvm serve` pods: requests/s and p50 through the Service with one pod and with two.
A watcher process inside the cluster's namespaces polls the log file and the pod's address, so the
timings include no kubectl round trips. Needs root, /dev/kvm, the test suite's packages.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))

# Runs inside the cluster's mount and network namespaces: waits for the pod's log file (any
# content) and for an HTTP answer from the address host-local gave the pod; prints both (epoch s).
WATCHER = r"""
import glob, json, os, socket, sys, time
name, ipam = sys.argv[1], sys.argv[2]
known = set(os.listdir(ipam)) if os.path.isdir(ipam) else set()
first = answer = None
ip = None
deadline = time.time() + 120
while answer is None and time.time() < deadline:
    if first is None:
        for log in glob.glob(f"/var/log/pods/default_{name}-*/app/*.log"):
            if os.path.getsize(log) > 0:
                first = time.time()
    if ip is None and os.path.isdir(ipam):
        new = [f for f in os.listdir(ipam) if f[0].isdigit() and f not in known]
        ip = new[0] if new else None
    if ip is not None and first is not None:     # both print once up: no ARP probes for nobody
        try:
            with socket.create_connection((ip, 80), timeout=0.1) as s:
                s.settimeout(2)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.0 200"):
                    answer = time.time()
        except OSError:
            pass
    time.sleep(0.002)
print(json.dumps({"first_output": first, "http": answer}))
"""

LOAD = r"""
import socket, sys, threading, time
host, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat, errors, lock, left = [], [0], threading.Lock(), [n]
def worker():
    while True:
        with lock:
            if not left[0]:
                return
            left[0] -= 1
        t = time.perf_counter()
        try:
            with socket.create_connection((host, 80), timeout=10) as s:
                s.sendall(b"GET /bench HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            ok = b"served by this VM instance: 1\n" in data
        except OSError:
            ok = False
        with lock:
            (lat.append(time.perf_counter() - t) if ok else errors.__setitem__(0, errors[0] + 1))
t0 = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(conc)]
[t.start() for t in threads]
[t.join() for t in threads]
took = time.perf_counter() - t0
lat.sort()
print(len(lat) / took, lat[len(lat) // 2] * 1e3 if lat else 0, errors[0])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "bench" / "k8s_results.json"))
    args = ap.parse_args()
    from conftest import GuestBuilder
    from k8s_cluster import Cluster, ensure_binaries, missing, wait_for
    import test_k8s as t
    if missing():
        print(f"k8s: skipped: {missing()}")
        return 0
    ensure_binaries()
    rows = []

    def row(name, value, unit, floor, floor_name, note=""):
        rows.append({"name": name, "value": value, "unit": unit, "floor": floor, "floor_name": floor_name,
                     "ratio": value / floor if floor else None, "note": note})
        print(f"k8s {name:48} {value:9.1f} {unit:5} {floor:9.1f} {value / floor:6.2f}x  {floor_name}  {note}",
              flush=True)

    with tempfile.TemporaryDirectory(prefix="ukvm-k8s-bench-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        tars = t.build_images(work / "images", GuestBuilder(work))
        c = Cluster(work / "cluster")
        try:
            for tar in tars:
                c.ctr("images", "import", tar)
            rounds = 3 if args.quick else 7
            starts = {"ukvm": [], "runc": []}
            for i in range(rounds):
                for kind in ("ukvm", "runc"):
                    starts[kind].append(static_pod_start(c, kind, i, t))
            for label, key in (("first output", "first_output"), ("HTTP answer", "http")):
                u = statistics.median(s[key] for s in starts["ukvm"])
                r = statistics.median(s[key] for s in starts["runc"])
                row(f"static pod: manifest -> {label}", u, "ms", r, "runc pod, static C server",
                    f"ukvm min {min(s[key] for s in starts['ukvm']):.0f}")
            deletes = {"ukvm": [], "runc": []}
            for i in range(1 if args.quick else 3):
                for kind, image in (("ukvm", t.IMAGES["httpd"]), ("runc", t.IMAGES["static-httpd"])):
                    name = f"del{kind}{i}"
                    c.apply(t.deployment(name, image, kind == "ukvm", 2))
                    t.ready_pods(c, name, 2)
                    start = time.monotonic()
                    t.delete_and_wait(c, "deployment", name, f"app={name}")
                    deletes[kind].append(time.monotonic() - start)
            row("Deployment of 2 deleted -> pods gone", statistics.median(deletes["ukvm"]), "s",
                statistics.median(deletes["runc"]), "runc pods", f"ukvm all {[round(x, 1) for x in deletes['ukvm']]}")
            serve_rows(c, t, row, 300 if args.quick else 1000, wait_for)
        finally:
            c.close()
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def static_pod_start(c, kind: str, i: int, t) -> dict:
    name = f"st{kind}{i}"
    image = t.IMAGES["httpd"] if kind == "ukvm" else t.IMAGES["static-httpd"]
    spec = t.pod_spec(image, kind == "ukvm")
    del spec["containers"][0]["readinessProbe"]
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    watcher = subprocess.Popen(["nsenter", "-t", str(c.ns_pid), "-n", "-m", "--", sys.executable, "-I", "-S", "-c",
                                WATCHER, name, str(c.work / "ipam" / "ukvm-k8s")], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)            # the watcher has listed the addresses in use before the pod exists
    path = c.work / "manifests" / f"{name}.json"
    hidden = path.with_name("." + path.name)     # kubelet skips dot files: no half-written manifest
    hidden.write_text(json.dumps(manifest))
    start = time.time()
    hidden.rename(path)
    out, _ = watcher.communicate(timeout=180)
    got = {k: (v - start) * 1e3 for k, v in json.loads(out).items() if v is not None}
    path.unlink()
    deadline = time.monotonic() + 180
    while c.get("pods")["items"] and any(p["metadata"]["name"].startswith(name) for p in c.get("pods")["items"]):
        assert time.monotonic() < deadline, f"{name} did not go"
        time.sleep(0.5)
    assert "first_output" in got and "http" in got, (name, got)
    return got


def serve_rows(c, t, row, n, wait_for) -> None:
    fleet = t.deployment("benchfleet", t.IMAGES["serve"], True, 1)
    svc = t.service("benchfleet")
    svc["spec"]["ports"] = [{"port": 80, "targetPort": t.SERVE_PORT}]
    c.apply(fleet, svc)
    ip = c.get("service", "benchfleet")["spec"]["clusterIP"]
    results = {}
    for replicas in (1, 2):
        c.kubectl("scale", "deployment", "benchfleet", f"--replicas={replicas}")
        t.ready_pods(c, "benchfleet", replicas)
        wait_for(lambda: len(c.get("endpoints", "benchfleet")["subsets"][0].get("addresses", [])) == replicas, 60)
        wait_for(lambda: c.http(f"http://{ip}/", timeout=3), 60)
        p = c.in_ns(sys.executable, "-I", "-S", "-c", LOAD, ip, str(n), "8", timeout=600, check=True)
        rps, p50, errors = map(float, p.stdout.split())
        results[replicas] = (rps, p50, errors)
    row("serve pods: requests/s, 2 pods against 1", results[2][0], "req/s", results[1][0], "1 serve pod",
        f"errors {results[2][2]:.0f}/{results[1][2]:.0f}; 8 connections at once")
    row("serve pods: p50 latency, 2 pods against 1", results[2][1], "ms", results[1][1], "1 serve pod")
    c.kubectl("delete", "deployment,service", "benchfleet", "--wait=false")     # the cluster goes next


if __name__ == "__main__":
    sys.exit(main())
