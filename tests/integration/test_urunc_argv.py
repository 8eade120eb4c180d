"""`ukvm-hvt` as the solo5-hvt that urunc calls (issue 14): its exact argv shapes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_kvm, ukvm
from test_net import Netns, finish

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="TAP devices need root")]
HVT = str(Path(sys.executable).with_name("ukvm-hvt"))
CLIENT = Path(__file__).with_name("http_client.py")


@pytest.fixture(scope="module")
def httpd(tmp_path_factory):
    out = tmp_path_factory.mktemp("urunc") / "httpd.hvt"
    subprocess.run([sys.executable, ROOT / "examples" / "httpd" / "build.py", "-o", out], check=True,
                   capture_output=True, timeout=600)
    return out


def test_urunc_argv_with_network(httpd):
    """What urunc's hvt backend builds for a MirageOS-style guest: memory in decimal MB, the NIC
    named `service`, its MAC, `--`, the kernel, and the whole command line as one argument."""
    ns = Netns()
    try:
        ns.tap("tap0", "10.0.0.1/24")
        argv = [HVT, "--mem=268", "--net:service=tap0", "--net-mac:service=02:aa:bb:cc:dd:ee", "--", str(httpd),
                "--ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1"]
        tender = ns.popen(*argv)
        try:
            for _ in range(300):            # bounded: until the guest answers
                got = ns.run(sys.executable, CLIENT, "10.0.0.2", "80", "get", "/urunc", timeout=30)
                if b'"status"' in got.stdout:
                    break
            assert b"HTTP/1.0 200 OK" in got.stdout and b"path: /urunc" in got.stdout, got.stdout
            neigh = ns.run("ip", "neigh", "show", "10.0.0.2").stdout.decode()
            assert "02:aa:bb:cc:dd:ee" in neigh, neigh             # the MAC urunc gave
        finally:
            tender.terminate()
            status, out = finish(tender)
        assert "268 MB addressable" in out or "Memory map: 268 MB" in out, out
    finally:
        ns.close()


def test_empty_arguments_and_arguments_after_the_kernel(guest):
    hello = guest("test_hello")
    p = subprocess.run([HVT, "--mem=16", "", "", str(hello), "Hello_Solo5"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "Hello_Solo5" in p.stdout, p.stdout + p.stderr


def test_other_names_keep_solo5_hvts_errors(guest):
    """Only urunc's own NIC names are mapped, and only to the single NIC a unikernel declares."""
    hello = guest("test_hello")
    p = ukvm("run", "--net:other=tap0", hello)
    assert p.returncode != 0 and b"Resource not declared in manifest: 'other'" in p.stdout, p.stdout
