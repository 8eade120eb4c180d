"""ukvm-oci's NIC set-up in a pod-like network namespace (one the test creates): the guest's
gateway is the namespace's default route, and none when the CNI result installed none."""
import json
import os
import subprocess
import sys

import pytest

from ukvm.oci.unikernel import Unikernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def netns():
    name = f"ukvm-gw-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
                    ["addr", "add", "10.55.0.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["link", "set", "peer0", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def setup_in(ns: str) -> dict:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                        "import json; from ukvm.oci.network import setup_network; print(json.dumps(setup_network()))"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def guest_cmdline(net: dict) -> list[str]:
    u = Unikernel.__new__(Unikernel)
    u.nics, u.blocks, u.cmdline, u.binary = ["service0"], {}, "app-arg", "/proc/self/fd/9"
    argv = u.tender_argv(64, net, ["python"])
    return argv[argv.index("--") + 2:]


def test_no_default_route_no_gateway(netns):
    net = setup_in(netns)
    assert net["ip"] == "10.55.0.2/24" and net["gateway"] is None, net
    assert guest_cmdline(net) == ["--ipv4=10.55.0.2/24", "app-arg"]


def test_gateway_is_the_default_route(netns):
    subprocess.run(["ip", "-n", netns, "route", "add", "default", "via", "10.55.0.1"], check=True)
    net = setup_in(netns)
    assert net["gateway"] == "10.55.0.1", net
    assert guest_cmdline(net) == ["--ipv4=10.55.0.2/24", "--ipv4-gateway=10.55.0.1", "app-arg"]
    # the address moved to the guest; both directions redirected between the TAP and eth0
    addrs = subprocess.run(["ip", "-n", netns, "-j", "-4", "addr", "show", "eth0"], capture_output=True,
                           text=True, check=True).stdout
    assert "10.55.0.2" not in addrs
    for dev in ("eth0", "ukvmtap0"):
        f = subprocess.run(["ip", "netns", "exec", netns, "tc", "filter", "show", "dev", dev, "ingress"],
                           capture_output=True, text=True, check=True).stdout
        assert "mirred" in f, f
