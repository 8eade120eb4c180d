"""ukvm-oci against hostile images and a host network namespace, through real containerd.

Each image below is built to attack the runtime (issue 18): /urunc.json as a link to a device,
to a host file, as a FIFO, as a huge file; a block image that is a device node, a link out of
the rootfs, a directory; and a network unikernel in a container without a network namespace of
its own (`ctr run --net-host`). Each is refused with its one line through ctr, and the test's
"host" (containerd's network namespace, which the test made) keeps its addresses, routes, tc
rules, ukvm-oci state and cgroups exactly as before.
"""
import json
import os
import tarfile

import pytest

from conftest import needs_kvm
from containerd_env import Containerd, missing
from ukvm.oci.image import ANNOTATION, UKVM_BLOCKS, urunc_json, write_archive
from ukvm.oci.network import HOST_NETNS_REFUSAL

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="containerd and namespaces need root"),
              pytest.mark.skipif(missing() is not None, reason=missing() or "")]

BLOCK_MANIFEST = json.dumps({"type": "solo5.manifest", "version": 1,
                             "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]})
NET_MANIFEST = json.dumps({"type": "solo5.manifest", "version": 1,
                           "devices": [{"name": "service0", "type": "NET_BASIC"}]})
APP = "/unikernel/app.hvt"
DISK = "/unikernel/block/storage"


def entry(name, kind, target="", dev=(0, 0), size=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o644, 0
    info.linkname, (info.devmajor, info.devminor), info.size = target, dev, size
    return info


def keys(block=False, cmdline=""):
    k = {ANNOTATION + "binary": APP, ANNOTATION + "hypervisor": "hvt", ANNOTATION + "unikernelType": "solo5",
         ANNOTATION + "cmdline": cmdline}
    if block:
        k[UKVM_BLOCKS] = f"storage={DISK}"
    return k


class Zeros:
    """A file object of `n` zero bytes, for a huge layer entry without holding it in memory."""

    def __init__(self, n):
        self.left = n

    def read(self, size=-1):
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


@pytest.fixture(scope="module")
def host_file(tmp_path_factory):
    """A host file the images point at: urunc's JSON that would give the guest its command line."""
    path = tmp_path_factory.mktemp("host") / "urunc.json"
    path.write_bytes(urunc_json(keys(cmdline="read from the host")))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, guest, host_file):
    work = tmp_path_factory.mktemp("hostile")
    hello, blk, net = guest("test_hello", cpl0=False), guest("test_blk", BLOCK_MANIFEST, cpl0=False), \
        guest("test_net", NET_MANIFEST, cpl0=False)
    block_json = ("/urunc.json", urunc_json(keys(block=True)), 0o644)
    huge = entry("urunc.json", tarfile.REGTYPE, size=16 << 20)
    images = {
        "urunc-zero": [(APP, hello, 0o755), entry("dev/zero", tarfile.CHRTYPE, dev=(1, 5)),
                       entry("urunc.json", tarfile.SYMTYPE, "/dev/zero")],
        "urunc-host": [(APP, hello, 0o755), entry("urunc.json", tarfile.SYMTYPE, str(host_file))],
        "urunc-fifo": [(APP, hello, 0o755), entry("urunc.json", tarfile.FIFOTYPE)],
        "urunc-huge": [(APP, hello, 0o755), huge],
        "block-device": [(APP, blk, 0o755), block_json, entry(DISK, tarfile.BLKTYPE, dev=(7, 0))],
        "block-escape": [(APP, blk, 0o755), block_json, entry(DISK, tarfile.SYMTYPE, "../../../../etc/hostname")],
        "block-dir": [(APP, blk, 0o755), block_json, entry(DISK, tarfile.DIRTYPE)],
        "net": [(APP, net, 0o755), ("/urunc.json", urunc_json(keys(cmdline="mtu")), 0o644)],
        "hello": [(APP, hello, 0o755), ("/urunc.json", urunc_json(keys()), 0o644)],
    }
    e = Containerd(work / "containerd")
    try:
        for name, files in images.items():
            tar = work / f"{name}.tar"
            if name == "urunc-huge":       # tarfile takes the data from a file object at addfile
                _write_with_huge(tar, files, name)
            else:
                write_archive(str(tar), files, {"Entrypoint": [APP]}, {}, f"hostile-{name}:1")
            e.ctr("images", "import", tar, timeout=300)
        # The "host" namespace gets an addressed interface first in line, as the bug needed.
        for cmd in (("ip", "link", "add", "ukvmdum0", "type", "bridge"),
                    ("ip", "addr", "add", "10.77.0.1/24", "dev", "ukvmdum0"), ("ip", "link", "set", "ukvmdum0", "up")):
            assert e.in_netns(*cmd).returncode == 0
        yield e
    finally:
        e.close()


def _write_with_huge(tar, files, name):
    orig = tarfile.TarFile.addfile

    def addfile(self, info, fileobj=None):
        if info.name == "urunc.json" and info.isreg() and fileobj is None:
            fileobj = Zeros(info.size)
        return orig(self, info, fileobj)
    tarfile.TarFile.addfile = addfile
    try:
        write_archive(str(tar), files, {"Entrypoint": [APP]}, {}, f"hostile-{name}:1")
    finally:
        tarfile.TarFile.addfile = orig


def host_state(env):
    """What the container must not touch: the namespace's addresses, routes, tc rules (every
    link), and ukvm-oci's state and cgroups for the namespace's containers."""
    def sh(*cmd):
        p = env.in_netns(*cmd)
        assert p.returncode == 0, p.stderr
        return p.stdout
    links = [link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))]
    # IPv4 (IPv6 link-local addresses and routes come and go on their own after a link is up)
    state = {"addr": sorted((link["ifname"], a["local"], a["prefixlen"])
                            for link in json.loads(sh("ip", "-j", "-4", "addr", "show"))
                            for a in link.get("addr_info", [])),
             "route": sh("ip", "-j", "-4", "route", "show", "table", "all"),
             "qdisc": sh("tc", "qdisc", "show")}
    for link in links:
        state[f"filter {link}"] = sh("tc", "filter", "show", "dev", link, "ingress")
    runc_root = f"/proc/{env.containerd_pid()}/root/run/containerd/runc/ukvmtest"
    state["files"] = sorted(os.listdir(os.path.join(runc_root, "ukvm-oci"))) \
        if os.path.isdir(os.path.join(runc_root, "ukvm-oci")) else []
    state["cgroups"] = sorted(d for d in os.listdir("/sys/fs/cgroup/memory/ukvmtest")) \
        if os.path.isdir("/sys/fs/cgroup/memory/ukvmtest") else []
    return state


@pytest.mark.parametrize("image, args, message", [
    ("urunc-zero", (), "image refused: /urunc.json: a character device, not a regular file"),
    ("urunc-host", (), "image refused: /urunc.json: a symlink to nothing in the image"),
    ("urunc-fifo", (), "image refused: /urunc.json: a FIFO, not a regular file"),
    ("urunc-huge", (), "image refused: /urunc.json: 16777216 bytes, more than the 65536 allowed"),
    ("block-device", (), f"image refused: {DISK}: a block device, not a regular file"),
    ("block-escape", (), f"image refused: {DISK}: No such file or directory"),
    ("block-dir", (), f"image refused: {DISK}: a directory, not a regular file"),
    ("net", ("--net-host",), HOST_NETNS_REFUSAL),
    ("hello", ("--net-host",), HOST_NETNS_REFUSAL),       # no NIC: refused all the same
])
def test_refused_with_one_line_and_nothing_touched(env, image, args, message, host_file):
    before, host_bytes = host_state(env), host_file.read_bytes()
    name = f"h-{image}"
    p = env.ctr("run", "--rm", *args, "--runc-binary", env.ukvm_oci, f"docker.io/library/hostile-{image}:1", name,
                check=False, timeout=60)
    env.ctr("containers", "delete", name, check=False)
    assert p.returncode != 0, p.stdout
    assert message in p.stderr, p.stderr
    assert p.stderr.count("ukvm-oci") <= 1 and "Traceback" not in p.stderr, p.stderr
    assert "read from the host" not in p.stdout + p.stderr
    assert host_state(env) == before
    assert host_file.read_bytes() == host_bytes


def test_the_same_network_guest_runs_in_its_own_namespace(env):
    """The control: the image refused under --net-host starts in a namespace of its own."""
    p = env.ctr("run", "--rm", "--runc-binary", env.ukvm_oci, "docker.io/library/hostile-net:1", "h-net-own",
                check=False, timeout=60)
    env.ctr("containers", "delete", "h-net-own", check=False)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
