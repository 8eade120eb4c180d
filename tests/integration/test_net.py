"""Networking (issue 4): TAP devices in a private network namespace per test, both data paths.

Every tender and host tool runs inside the namespace; nothing is sent outside it. Every wait is
bounded by a timeout.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import needs_kvm

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
              pytest.mark.skipif(shutil.which("ip") is None or shutil.which("ping") is None,
                                 reason="needs iproute2 and iputils-ping (scripts/test.sh installs them)")]

FLOOD = 10000
_ids = itertools.count()


def manifest(*names):
    return json.dumps({"type": "solo5.manifest", "version": 1,
                       "devices": [{"name": n, "type": "NET_BASIC"} for n in names]})


ONE = manifest("service0")
TWO = manifest("service0", "service1")


class Netns:
    """A network namespace with TAP interfaces; removed (taps included) on close."""

    def __init__(self):
        self.name = f"ukvm-test-{os.getpid()}-{next(_ids)}"
        self._ip("netns", "add", self.name)
        self.exec_ok("ip", "link", "set", "lo", "up")

    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def exec_ok(self, *cmd):
        subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True, timeout=30)

    def tap(self, name, addr=None, mtu=None, up=True):
        self.exec_ok("ip", "tuntap", "add", name, "mode", "tap")
        if addr:
            self.exec_ok("ip", "addr", "add", addr, "dev", name)
        if mtu:
            self.exec_ok("ip", "link", "set", name, "mtu", str(mtu))
        if up:
            self.exec_ok("ip", "link", "set", name, "up")

    def popen(self, *cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, cmd)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, **kw)

    def run(self, *cmd, timeout=120, **kw):
        return subprocess.run(["ip", "netns", "exec", self.name, *map(str, cmd)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, **kw)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


@pytest.fixture
def ns():
    n = Netns()
    yield n
    n.close()


def tender(ns, *args):
    return ns.popen(sys.executable, "-m", "ukvm", "run", "--mem=32", *args)


def finish(proc, timeout=120):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(errors="replace")


def flood(ns, addr, count=FLOOD, pattern=None, seconds=80):
    args = ["timeout", str(seconds + 10), "ping", "-fq", "-w", str(seconds), "-c", str(count)]
    if pattern:
        args += ["-p", pattern]
    return ns.popen(*args, addr)


UDP_READY = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        s.sendto(b"ready?", (sys.argv[1], 7))
        if s.recvfrom(64)[0] == b"ready?":
            sys.exit(0)
    except OSError:
        pass
sys.exit("guest not serving after 30 s")
"""


def wait_until_serving(ns, addr="10.0.0.2"):
    """Bounded: the guest echoes a UDP datagram within 30 s (ARP resolved, guest serving). Floods
    start only after this, so that no request is lost before the guest has attached its TAP; UDP
    echoes do not count toward the guest's echo-request limit."""
    p = ns.run(sys.executable, "-c", UDP_READY, addr, timeout=60)
    assert p.returncode == 0, p.stdout.decode()


def one_echo(ns, addr="10.0.0.2"):
    """One ICMP echo, once the guest is serving (its limit=1 then ends it)."""
    p = ns.run("ping", "-c", "1", "-w", "10", addr, timeout=30)
    assert p.returncode == 0, p.stdout.decode()


def ping_received(output: str) -> int:
    for line in output.splitlines():
        if "packets transmitted" in line:
            return int(line.split(",")[1].split()[0])
    return -1


@pytest.mark.parametrize("ring", ["off", "on"])
def test_ping_flood(guest, ns, ring):
    ns.tap("tap0", "10.0.0.1/24")
    t = tender(ns, f"--net-ring={ring}", "--net:service0=tap0", guest("test_net", ONE), f"limit={FLOOD}")
    wait_until_serving(ns)
    p = flood(ns, "10.0.0.2")
    _, ping_out = finish(p)
    status, out = finish(t)
    assert ping_received(ping_out) == FLOOD, ping_out
    assert status == 0, out
    assert "[service0] Serving ping on 10.0.0.2, with MAC: " in out and "SUCCESS" in out


@pytest.mark.parametrize("cpl0", [True, False], ids=["cpl0", "cpl3"])
@pytest.mark.parametrize("ring", ["off", "on"])
def test_net_ring_payload_integrity(guest, ns, ring, cpl0):
    ns.tap("tap0", "10.0.0.1/24")
    t = tender(ns, f"--net-ring={ring}", "--net:service0=tap0", guest("test_net", ONE, cpl0=cpl0),
               f"limit={FLOOD} verify")
    wait_until_serving(ns)
    _, ping_out = finish(flood(ns, "10.0.0.2", pattern="deadbeef"))
    status, out = finish(t)
    assert ping_received(ping_out) == FLOOD, ping_out
    assert status == 0, out
    assert f"Verified {FLOOD} packets, 0 corrupted" in out
    assert "CORRUPT" not in out


def test_net_2if(guest, ns):
    ns.tap("tap0", "10.0.0.1/24")
    ns.tap("tap1", "10.1.0.1/24")
    t = tender(ns, "--net:service0=tap0", "--net:service1=tap1", guest("test_net", TWO), f"limit={FLOOD}")
    wait_until_serving(ns, "10.0.0.2")
    wait_until_serving(ns, "10.1.0.2")
    pings = [flood(ns, "10.0.0.2", FLOOD // 2), flood(ns, "10.1.0.2", FLOOD // 2)]
    outs = [finish(p)[1] for p in pings]
    status, out = finish(t)
    assert [ping_received(o) for o in outs] == [FLOOD // 2, FLOOD // 2], outs
    assert status == 0, out
    assert "[service1] Serving ping on 10.1.0.2" in out


def test_net_mtu(guest, ns):
    ns.tap("tap0", mtu=9000)
    status, out = finish(tender(ns, "--net:service0=tap0", guest("test_net", ONE), "mtu"))
    assert status == 0, out
    assert "MTU is 9000\n" in out and "SUCCESS" in out


def test_jumbo_frames_pass_unchanged(guest, ns):
    ns.tap("tap0", "10.0.0.1/24", mtu=9000)
    t = tender(ns, "--net:service0=tap0", guest("test_net", ONE), "limit=200")
    wait_until_serving(ns)
    p = ns.popen("timeout", "60", "ping", "-q", "-i", "0.002", "-w", "50", "-c", "200", "-s", "8900", "-M", "do",
                 "10.0.0.2")
    _, ping_out = finish(p)
    status, out = finish(t)
    assert ping_received(ping_out) == 200, ping_out
    assert status == 0, out


UDP_CLIENT = r"""
import socket, sys, os
count, window = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("10.0.0.2", 7))
sizes = [1, 64, 512, 1400, 1472]
sent = received = 0
pending = {}
while received < count:
    while sent < count and len(pending) < window:
        payload = sent.to_bytes(4, "big") + os.urandom(sizes[sent % len(sizes)] + 60)[:max(0, sizes[sent % len(sizes)] - 4)]
        pending[sent] = payload
        s.send(payload)
        sent += 1
    data = s.recv(2048)
    seq = int.from_bytes(data[:4], "big")
    assert pending.pop(seq) == data, f"reply {seq} differs"
    received += 1
print(f"udp ok {received}")
"""


@pytest.mark.parametrize("cpl0", [True, False], ids=["cpl0", "cpl3"])
@pytest.mark.parametrize("ring", ["off", "on"])
def test_udp_echo(guest, ns, ring, cpl0):
    ns.tap("tap0", "10.0.0.1/24")
    t = tender(ns, f"--net-ring={ring}", "--net:service0=tap0", guest("test_net", ONE, cpl0=cpl0))
    try:
        wait_until_serving(ns)
        client = ns.run(sys.executable, "-c", UDP_CLIENT, "3000", "16", timeout=120)
    finally:
        t.kill()
        finish(t)
    assert client.returncode == 0, client.stdout.decode()
    assert b"udp ok 3000" in client.stdout


def test_mac_option(guest, ns):
    ns.tap("tap0", "10.0.0.1/24")
    t = tender(ns, "--net-mac:service0=2:0:0:aa:BB:c", "--net:service0=tap0", guest("test_net", ONE), "limit=1")
    wait_until_serving(ns)
    neigh = ns.run("ip", "neigh", "show", "10.0.0.2").stdout.decode()   # the host learnt it by ARP
    one_echo(ns)
    status, out = finish(t)
    assert status == 0, out
    assert "with MAC: 020000aabb0c\n" in out
    assert "02:00:00:aa:bb:0c" in neigh


def test_generated_mac_is_local_unicast(guest, ns):
    ns.tap("tap0", "10.0.0.1/24")
    t = tender(ns, "--net:service0=tap0", guest("test_net", ONE), "limit=1")
    wait_until_serving(ns)
    one_echo(ns)
    _, out = finish(t)
    mac = out.split("with MAC: ")[1][:12]
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2


@pytest.mark.parametrize("setup,arg,message", [
    (lambda ns: None, "--net:service0=tap9", "Could not attach interface: tap9: No such file or directory"),
    (lambda ns: ns.tap("tap0", up=False), "--net:service0=tap0", "Could not attach interface: tap0: Network is down"),
    (lambda ns: None, "--net:service0=averyveryverylongname", "Could not attach interface: averyveryverylongna: "
                                                              "File name too long"),
    (lambda ns: ns.tap("tap0"), "--net:other=tap0", "Resource not declared in manifest: 'other'"),
    (lambda ns: ns.tap("tap0"), "--net-mac:service0=01:02:03", "Invalid option: `--net-mac:service0=01:02:03'"),
    (lambda ns: ns.tap("tap0"), "--net-mac:service0=1:2:3:4:5:xyz", "Invalid option"),
    (lambda ns: None, "--net:service0=@99", "Could not attach interface: @99: Bad file descriptor"),
    (lambda ns: None, "--net:service0=@x", "Could not attach interface: @x: Invalid argument"),
])
def test_attach_errors(guest, ns, setup, arg, message):
    setup(ns)
    status, out = finish(tender(ns, arg, guest("test_net", ONE)))
    assert status == 1, out
    assert message in out
    assert "Traceback" not in out


def test_busy_tap(guest, ns):
    ns.tap("tap0")
    status, out = finish(tender(ns, "--net:service0=tap0", "--net:service1=tap0", guest("test_net", TWO)))
    assert status == 1
    assert "Could not attach interface: tap0: Device or resource busy" in out


def test_not_attached(guest, ns):
    status, out = finish(tender(ns, guest("test_net", ONE)))
    assert status == 1
    assert "Device 'service0' of type NET_BASIC declared but not attached." in out


PASS_FD = r"""
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tap0", 0x1002))
os.set_inheritable(fd, True)
os.execv(sys.executable, [sys.executable, "-m", "ukvm", "run", "--mem=32", f"--net:service0=@{fd}"] + sys.argv[1:])
"""


def test_open_fd_from_an_orchestrator(guest, ns):
    ns.tap("tap0", "10.0.0.1/24", mtu=4000)
    t = ns.popen(sys.executable, "-c", PASS_FD, guest("test_net", ONE), "limit=1000")
    wait_until_serving(ns)
    _, ping_out = finish(flood(ns, "10.0.0.2", 1000))
    status, out = finish(t)
    assert ping_received(ping_out) == 1000, ping_out
    assert status == 0, out


@pytest.mark.parametrize("attack,message", [
    ("badptr", "ukvm: Invalid guest access: gpa=0xfffffff000, sz=64"),
    ("index", "ukvm: Invalid guest ring state: ent_tail=5000, ent_head=0"),
])
def test_ring_attacks_stop_the_vm(guest, ns, attack, message):
    ns.tap("tap0")
    status, out = finish(tender(ns, "--net-ring=on", "--net:service0=tap0", guest("test_ringattack", ONE), attack),
                         timeout=60)
    assert status == 1, out
    assert message in out
    assert "Traceback" not in out


@pytest.mark.parametrize("cpl0", [True, False])
def test_ring_auto_follows_host_and_guest(guest, ns, cpl0):
    # auto offers the ring except to CPL0 guests where CPL0 code is emulated (docs/performance.md).
    ns.tap("tap0")
    status, out = finish(tender(ns, "--net:service0=tap0", guest("test_ringattack", ONE, cpl0=cpl0), "index"),
                         timeout=60)
    if cpl0 and os.path.exists("/sys/module/kvm_pvm"):
        assert status == 98 and "no ring offered" in out, out
    else:
        assert status == 1 and "Invalid guest ring state" in out, out
