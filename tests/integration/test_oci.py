"""ukvm under containerd (issue 14): ukvm-oci driven by Debian's containerd, runc shim and CNI.

containerd runs in private namespaces started by the tests (containerd_env.py); images are built
with `ukvm oci build` and imported with `ctr images import`. The CRI path is driven the way
kubelet drives it, with a small CRI client (cri_client.py).
"""
import json
import os
import subprocess
import sys
import time

import grpc
import pytest

from conftest import ROOT, needs_kvm
from ukvm.oci.cgroups import Cgroup
from ukvm.oci.runtime import EXEC_REFUSAL
from ukvm.oci.unikernel import TENDER_MIB
from containerd_env import PAUSE_IMAGE, POD_SUBNET, Containerd, missing

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="containerd and namespaces need root"),
              pytest.mark.skipif(missing() is not None, reason=missing() or "")]

BLOCK_MANIFEST = json.dumps({"type": "solo5.manifest", "version": 1,
                             "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]})


def oci_build(*args) -> None:
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", "build", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def images(tmp_path_factory, guest):
    """Image archives: hello, a block guest with its disk, a network guest (the lwIP example)
    and a long sleeper; plus a static pause program for pod sandboxes."""
    work = tmp_path_factory.mktemp("oci-images")
    out = {}
    hello = work / "hello.hvt"
    subprocess.run([sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello], check=True,
                   capture_output=True, timeout=120)
    oci_build(hello, "-o", work / "hello.tar", "--tag", "ukvm-hello:1", "--cmdline", "from an image")
    out["hello"] = "docker.io/library/ukvm-hello:1"
    disk = work / "disk.img"
    disk.write_bytes(bytes(64 * 1024))
    blk = guest("test_blk", BLOCK_MANIFEST, cpl0=False)
    oci_build(blk, "-o", work / "blk.tar", "--tag", "ukvm-blk:1", "--block", f"storage={disk}")
    out["blk"] = "docker.io/library/ukvm-blk:1"
    sleeper = guest("test_hostile", cpl0=False)
    oci_build(sleeper, "-o", work / "sleep.tar", "--tag", "ukvm-sleep:1", "--cmdline", "sleep")
    out["sleep"] = "docker.io/library/ukvm-sleep:1"
    httpd = work / "httpd.hvt"
    subprocess.run([sys.executable, ROOT / "examples" / "httpd" / "build.py", "-o", httpd], check=True,
                   capture_output=True, timeout=600)
    oci_build(httpd, "-o", work / "httpd.tar", "--tag", "ukvm-httpd:1")
    out["httpd"] = "docker.io/library/ukvm-httpd:1"
    broken = work / "broken.tar"
    notelf = work / "notelf.hvt"
    notelf.write_bytes(b"\x7fELF but not really")
    from ukvm.oci.image import ANNOTATION, urunc_json, write_archive
    keys = {ANNOTATION + "binary": "/unikernel/app.hvt", ANNOTATION + "hypervisor": "hvt",
            ANNOTATION + "unikernelType": "solo5"}
    write_archive(str(broken), [("/unikernel/app.hvt", notelf.read_bytes(), 0o755), ("/urunc.json", urunc_json(keys), 0o644)],
                  {"Labels": keys}, keys, "ukvm-broken:1")
    out["broken"] = "docker.io/library/ukvm-broken:1"
    pause = work / "pause"
    subprocess.run(["gcc", "-static", "-O2", "-o", pause, ROOT / "tests" / "oci" / "pause.c"], check=True, timeout=120)
    write_archive(str(work / "pause.tar"), [("/pause", pause.read_bytes(), 0o755)], {"Entrypoint": ["/pause"]}, {},
                  PAUSE_IMAGE.split("/")[-1])
    out["dir"] = work
    return out


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, images):
    env = Containerd(tmp_path_factory.mktemp("containerd"))
    try:
        for name in ("hello", "blk", "sleep", "broken"):
            env.ctr("images", "import", images["dir"] / f"{name}.tar", timeout=300)
        for name in ("pause", "httpd"):          # for the CRI test: CRI's namespace is k8s.io
            env.ctr("images", "import", images["dir"] / f"{name}.tar", namespace="k8s.io", timeout=300)
        yield env
    finally:
        env.close()


def test_ctr_run_shows_output_and_status(containerd, images):
    p = containerd.ctr("run", "--rm", "--runc-binary", containerd.ukvm_oci, images["hello"], "hello1", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Hello, World" in p.stdout and "Command line is: 'from an image'" in p.stdout
    assert containerd.ctr("containers", "ls", "-q").stdout.strip() == ""      # --rm removed it


def test_block_device_from_the_image(containerd, images):
    p = containerd.ctr("run", "--rm", "--runc-binary", containerd.ukvm_oci, images["blk"], "blk1", check=False)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_memory_limit_reaches_mem(containerd, images):
    p = containerd.ctr("run", "--rm", "--memory-limit", str(128 << 20), "--runc-binary", containerd.ukvm_oci, images["hello"],
                       "mem1", check=False)
    assert p.returncode == 0 and f"{128 - TENDER_MIB} MB addressable" in p.stdout, p.stdout + p.stderr


def test_detached_kill_ps_delete(containerd, images):
    """A detached unikernel is one process (the tender); `kill --all` sends SIGTERM to it, which
    ends the guest with the tender's own status (1, as solo5-hvt), and ctr sees that status."""
    containerd.ctr("run", "-d", "--runc-binary", containerd.ukvm_oci, images["sleep"], "sleep1")
    try:
        tasks = containerd.ctr("task", "ls").stdout.split()
        assert tasks[tasks.index("sleep1") + 2] == "RUNNING", tasks
        ps = containerd.ctr("task", "ps", "sleep1").stdout.split()
        assert ps[ps.index("INFO") + 1:] == [tasks[tasks.index("sleep1") + 1], "-"], ps   # just the tender
        probe = containerd.ctr("task", "exec", "--exec-id", "probe", "sleep1", "/bin/true", check=False)
        assert probe.returncode != 0 and EXEC_REFUSAL in probe.stderr, probe.stderr    # kubelet's exec probe too
        containerd.ctr("task", "kill", "--all", "sleep1")
        deadline = time.monotonic() + 30
        while "STOPPED" not in containerd.ctr("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        out = containerd.ctr("task", "delete", "sleep1", check=False)
        assert out.returncode == 0 and "exit code 1" in out.stderr + out.stdout, out
    finally:
        containerd.ctr("task", "delete", "--force", "sleep1", check=False)
        containerd.ctr("containers", "delete", "sleep1", check=False)
    assert "sleep1" not in containerd.ctr("containers", "ls", "-q").stdout


def test_broken_image_is_a_clear_error(containerd, images):
    p = containerd.ctr("run", "--rm", "--runc-binary", containerd.ukvm_oci, images["broken"], "broken1", check=False)
    assert p.returncode != 0
    assert "app.hvt: invalid executable" in p.stderr, p.stderr            # the loader's own words
    containerd.ctr("containers", "delete", "broken1", check=False)


def wait_for(predicate, timeout: float = 60, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)
    return value


def test_cri_pod_with_a_network_guest(containerd, tmp_path):
    """As kubelet drives it: the pod sandbox (pause, handed to runc by ukvm-oci), then the lwIP
    example in it with the ukvm handler; the guest owns the pod's IP and answers at it."""
    from cri_client import CriClient
    cri = CriClient(containerd.sock)
    logs = tmp_path / "pod-logs"
    logs.mkdir()
    config = CriClient.sandbox_config("web", "uid-web-1", "default", str(logs))
    sid = cri.run_pod_sandbox(config, "ukvm")
    try:
        ip = cri.pod_ip(sid)
        assert ip.startswith(POD_SUBNET.rsplit(".", 2)[0]), ip
        cid = cri.create_container(sid, config, "httpd", "docker.io/library/ukvm-httpd:1", "httpd.log")
        cri.start_container(cid)
        log = logs / "httpd.log"
        wait_for(lambda: log.exists() and "httpd: listening" in log.read_text())
        assert cri.container_state(cid)[0] == 1                         # running
        got = containerd.in_netns("curl", "-s", "-m", "10", f"http://{ip}/pod")
        assert "requests served by this VM instance: 1" in got.stdout and "path: /pod" in got.stdout, got
        lines = log.read_text().splitlines()
        assert all(" stdout " in line or " stderr " in line for line in lines), lines[:3]   # CRI log format
        # UpdateContainerResources reaches the tender's cgroup (runc's `update --resources -`)
        cri.update_container_resources(cid, cpu_period=100000, cpu_quota=50000)
        group = Cgroup(f"/k8s.io/{cid}", cid, False)          # containerd CRI: /NAMESPACE/ID
        with open(group.file("cpu", "cpu.max" if group.version == 2 else "cpu.cfs_quota_us")) as f:
            assert f.read().split()[0] == "50000"
        with pytest.raises(grpc.RpcError, match="below the guest's 512 MiB"):   # fixed at boot: one line
            cri.update_container_resources(cid, memory_limit=64 << 20)
        cri.stop_container(cid, 10)                                     # SIGTERM to the tender
        state, code = wait_for(lambda: (s := cri.container_state(cid))[0] == 2 and s)
        assert code == 1, code                                          # "Exiting on signal 15"
        assert "Exiting on signal 15" in log.read_text()
        cri.remove_container(cid)
    finally:
        cri.stop_pod_sandbox(sid)
        cri.remove_pod_sandbox(sid)
        cri.close()
