"""`ukvm serve` confined once set up (issue 18): another user, no capabilities, no_new_privs,
seccomp on every thread, an empty root in a mount namespace of its own; answers and metrics as
unconfined. Runs in the network namespace test_serve.py makes; every wait is bounded."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import needs_kvm, read_until
from test_serve import httpd, metric, served  # noqa: F401  (httpd, served: fixtures)

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TAPs need root")]


def status_of(path: str) -> dict:
    with open(path) as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def user_threads(pid: int) -> list[dict]:
    """/proc status of every thread of `pid` that runs our code: KVM's NX-recovery workers
    (kvm-nx-lpage-re) are kernel tasks in the thread group that never return to user space."""
    threads = [status_of(f"/proc/{pid}/task/{tid}/status") for tid in os.listdir(f"/proc/{pid}/task")]
    return [t for t in threads if not t["Name"].startswith("kvm-")]


def test_every_thread_is_confined_while_serving(served):
    s = served("--pool=3")
    first = s.client("seq", "20", "/a/")                    # the clones' threads have all run
    assert first["ok"] == 20 and first["served"] == [1], first["errors"]
    pid = s.proc.pid
    main = status_of(f"/proc/{pid}/status")
    threads = user_threads(pid)
    assert len(threads) >= 1 + 3 + 1                         # loop, one per clone, metrics
    for t in [main, *threads]:
        assert t["Seccomp"] == "2" and t["NoNewPrivs"] == "1", t
        assert t["Uid"].split() == ["65534"] * 4 and t["Gid"].split() == ["65534"] * 4, t   # nobody/nogroup
        assert t["Groups"] == "", t
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert t[caps] == "0000000000000000", (caps, t)
    assert os.listdir(f"/proc/{pid}/root") == []             # an empty root ...
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")   # ... in its own namespace
    with open(f"/proc/{pid}/mountinfo") as f:
        mounts = f.read().splitlines()
    assert len(mounts) == 1 and " / / ro," in mounts[0] and "tmpfs" in mounts[0], mounts
    assert os.stat(f"/proc/{pid}/fd").st_uid == 0            # not dumpable: /proc/PID/* stays root's
    # Still answering, each request in a fresh clone, and the metrics (a thread per scrape) work.
    for _ in range(3):
        assert metric(s.metrics(), "ukvm_requests_total", outcome="ok") >= 20
    more = s.client("conc", "60", "6", "/b/")
    assert more["ok"] == 60 and more["served"] == [1], more["errors"]
    assert metric(s.settled_metrics(), "ukvm_requests_total", outcome="ok") == 80
    code, out = s.stop()
    assert code == 0, out                                    # the drain and the exit, confined too
    assert "drained: 80 requests served, 0 clone failures" in out


def test_user_option(served):
    s = served("--pool=1", "--user=daemon")
    assert s.client("seq", "2", "/")["ok"] == 2
    main = status_of(f"/proc/{s.proc.pid}/status")
    assert main["Uid"].split()[0] == "1" and main["Seccomp"] == "2"      # Debian's daemon
    code, out = s.stop()
    assert code == 0, out


def test_no_sandbox_switch_says_so(served):
    s = served("--pool=1", "--x-no-sandbox")
    assert s.client("seq", "3", "/")["ok"] == 3
    main = status_of(f"/proc/{s.proc.pid}/status")
    assert main["Seccomp"] == "0" and main["Uid"].split()[0] == "0"
    code, out = s.stop()
    assert code == 0 and "WARNING: --x-no-sandbox: serve runs as root, unconfined" in out, out


@pytest.mark.parametrize("user, message", [("no-such-user-ukvm", "--user no-such-user-ukvm: no such user"),
                                           ("root", "--user root: must not be root or in group root")])
def test_bad_user_is_one_line_before_anything(httpd, user, message):  # noqa: F811
    p = subprocess.run([sys.executable, "-m", "ukvm", "serve", "--listen=127.0.0.1:1", "--guest=10.0.0.2:80",
                        f"--user={user}", httpd], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr == f"ukvm serve: {message}\n", p.stderr


# --- hostile guests through serve --------------------------------------------------------------
HOSTILE_MANIFEST = '{"type": "solo5.manifest", "version": 1, "devices": [{"name": "service0", "type": "NET_BASIC"}]}'
HYPERCALL_ATTACKS = ["argptr", "dataptr", "overflow", "port", "cookie"]
NET_ATTACKS = ["spoof", "arp", "flood"]

# Inside the namespace: benign GET /ok from 3 threads for as long as the attacks take, the attacks
# one after another meanwhile; one JSON line with what each got. Every socket has a timeout.
HOSTILE_CLIENT = r"""
import json, socket, sys, threading
def get(path):
    try:
        with socket.create_connection(("127.0.0.1", 8080), timeout=15) as s:
            s.sendall(b"GET /" + path.encode() + b" HTTP/1.0\r\n\r\n")
            data = b""
            while len(data) < 65536 and (chunk := s.recv(4096)):
                data += chunk
        return data.decode(errors="replace")
    except OSError as e:
        return "error: " + type(e).__name__
done = threading.Event()
benign = []
def worker():
    while not done.is_set() and len(benign) < 400:
        benign.append(get("ok"))
threads = [threading.Thread(target=worker) for _ in range(3)]
for t in threads:
    t.start()
attacks = {a: get(a) for a in sys.argv[1:]}
done.set()
for t in threads:
    t.join(60)
print(json.dumps({"benign": benign, "attacks": attacks}))
"""


def test_hostile_guests_end_only_their_own_connection(guest, served):
    image = guest("test_serve_hostile", HOSTILE_MANIFEST, cpl0=False)
    s = served("--pool=3", "--deadline=3", image=image)
    attacks = HYPERCALL_ATTACKS + ["loop"] + NET_ATTACKS
    p = s.ns.run(sys.executable, "-c", HOSTILE_CLIENT, *attacks, timeout=300)
    assert p.returncode == 0, p.stdout
    res = json.loads(p.stdout)
    for name, answer in res["attacks"].items():
        assert "200 OK" not in answer, (name, answer)          # the attacker's connection ended
    assert len(res["benign"]) >= 10
    for answer in res["benign"]:                                # everyone else: answered, fresh clone
        assert answer.startswith("HTTP/1.0 200 OK") and answer.endswith("served 1\n"), answer
    m = s.settled_metrics()
    failures = {cause: metric(m, "ukvm_clone_failures_total", cause=cause) for cause in ("fault", "exit", "timeout")}
    assert sum(failures.values()) == len(attacks), failures
    # The hypercall attacks fault; the spinner meets its deadline; the net attackers exit
    # (or, on a loaded machine, a flood of 20000 exits can meet the deadline first).
    assert failures["fault"] == len(HYPERCALL_ATTACKS) and failures["timeout"] >= 1, failures
    assert metric(m, "ukvm_requests_total", outcome="ok") == len(res["benign"])
    from_clones = sum(v for (name, labels), v in m.items()
                      if name == "ukvm_switch_dropped_frames_total" and ("source", "clone") in labels)
    assert from_clones >= 400 + 50, m                          # spoofed and ARP frames, refused
    main = status_of(f"/proc/{s.proc.pid}/status")
    assert main["Seccomp"] == "2" and main["Uid"].split()[0] != "0"
    code, out = s.stop()
    assert code == 0, out
    assert f"{len(res['benign'])} requests served, {len(attacks)} clone failures" in out, out


def test_the_boot_to_the_snapshot_is_confined_too(guest):
    """The boot runs the guest before serve is confined: it runs in a child confined the same
    way, which sends the snapshot back. Seen while the guest boots (it waits 3 s first)."""
    from test_net import Netns
    image = guest("test_serve_hostile", HOSTILE_MANIFEST, cpl0=False)
    ns = Netns()
    proc = ns.popen(sys.executable, "-m", "ukvm", "serve", "--listen=127.0.0.1:8080", "--guest=10.0.0.2:80",
                    "--host-ip=10.0.0.1/24", "--mem=32", "--pool=1", image, "slowboot")
    try:
        out = read_until(proc, b"booting slowly", timeout=60)
        assert b"booting slowly" in out, out
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        assert len(children) == 1, children
        child = status_of(f"/proc/{children[0]}/status")
        assert child["Seccomp"] == "2" and child["NoNewPrivs"] == "1", child
        assert child["Uid"].split() == ["65534"] * 4 and child["CapEff"] == child["CapBnd"] == "0" * 16, child
        assert os.listdir(f"/proc/{children[0]}/root") == []
        parent = status_of(f"/proc/{proc.pid}/status")
        assert parent["Seccomp"] == "0" and parent["Uid"].split()[0] == "0"     # still setting up
        out += read_until(proc, b"ukvm serve: listening", timeout=60)
        assert b"ukvm serve: listening" in out, out
        p = ns.run(sys.executable, "-c", HOSTILE_CLIENT, "ok", timeout=120)   # benign requests only
        res = json.loads(p.stdout)
        assert res["attacks"]["ok"].endswith("served 1\n"), res
        assert all(a.endswith("served 1\n") for a in res["benign"]), res["benign"][:3]
        assert not os.path.exists(f"/proc/{children[0]}/status")             # the boot child is gone
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            ns.close()
    assert proc.returncode == 0


def test_a_thousand_clones_are_confined(served):
    """Issue 20's density under confinement: the filter's size follows the pieces of the clones'
    fd sets, not their number (sandbox/bpf.py), so a pool past the old ~480-clone limit starts
    confined, and requests are answered each by a fresh clone under the filter."""
    s = served("--pool=1000", "--mem=8")
    assert b"1000 clones" in s.output, s.output
    assert status_of(f"/proc/{s.proc.pid}/status")["Seccomp"] == "2"
    reply = s.client("conc", "40", "4", "/x/")
    assert reply["ok"] == 40 and reply["served"] == [1], reply["errors"]
    code, out = s.stop()
    assert code == 0, out
    assert "drained: 40 requests served, 0 clone failures" in out
