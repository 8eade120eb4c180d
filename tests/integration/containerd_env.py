"""containerd_env.py: Debian's containerd started by the tests, in private namespaces.

containerd runs under `unshare` in new mount, PID and network namespaces (`--kill-child`: ending
the unshare process ends containerd and every shim and container with it), with a temporary
configuration and directories, tmpfs over /run/containerd and /run/netns inside its mount
namespace, a CNI bridge of its own, and a "ukvm" runtime handler for CRI (the stock runc shim
with BinaryName = ukvm-oci, the launcher `ukvm oci launcher` writes for this checkout). Nothing outside the test's directory is left behind.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PAUSE_IMAGE = "docker.io/library/ukvm-test-pause:1"
POD_SUBNET = "10.89.0.0/24"


def missing() -> str | None:
    for tool in ("containerd", "ctr", "runc", "unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test.sh installs containerd, runc, containernetworking-plugins)"
    if not os.path.exists("/usr/lib/cni/bridge"):
        return "needs the CNI plugins in /usr/lib/cni (containernetworking-plugins)"
    return None


class Containerd:
    def __init__(self, work: Path):
        self.work = work
        self.made_run_dir = not os.path.exists("/run/containerd")   # ctr makes it; removed if so
        self.sock = str(work / "containerd.sock")
        # ukvm-oci as a node would install it (`ukvm oci launcher`): this checkout, started lean.
        work.mkdir(parents=True, exist_ok=True)
        self.ukvm_oci = str(work / "ukvm-oci")
        subprocess.run([sys.executable, "-m", "ukvm", "oci", "launcher", self.ukvm_oci], check=True, timeout=60)
        (work / "cni").mkdir(parents=True, exist_ok=True)
        (work / "cni" / "10-ukvm-test.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "ukvm-test",
            "plugins": [{"type": "bridge", "bridge": "ukvmcni0", "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "subnet": POD_SUBNET, "dataDir": str(work / "ipam"),
                                  "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        (work / "config.toml").write_text(f"""version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ukvm]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ukvm.options]
      BinaryName = "{self.ukvm_oci}"
""")
        script = ("mount -t tmpfs tmpfs /run/containerd 2>/dev/null || "
                  "{ mkdir -p /run/containerd && mount -t tmpfs tmpfs /run/containerd; }; "
                  "mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; ip link set lo up; "
                  f"exec containerd --config {work}/config.toml")
        self.log = open(work / "containerd.log", "wb")
        self.proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--net", "--mount-proc",
                                      "--kill-child", "sh", "-c", script], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, (work / "containerd.log").read_text()
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120, namespace: str = "ukvmtest") -> subprocess.CompletedProcess:
        args = list(map(str, args))
        if args[:1] == ["run"]:     # ctr makes the IO FIFOs itself: where containerd also sees them
            args[1:1] = ["--fifo-dir", str(self.work / "fifo")]
        p = subprocess.run(["ctr", "--address", self.sock, "--namespace", namespace, *args],
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, f"ctr {' '.join(map(str, args))}: {p.stdout}{p.stderr}"
        return p

    def in_netns(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command in containerd's network namespace (the host side of its CNI bridge)."""
        child = self.containerd_pid()
        return subprocess.run(["nsenter", "-t", str(child), "-n", *map(str, cmd)], capture_output=True,
                              text=True, timeout=timeout)

    def containerd_pid(self) -> int:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return int(f.read().split()[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()           # --kill-child: containerd, shims and containers go too
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        if self.made_run_dir:
            shutil.rmtree("/run/containerd", ignore_errors=True)
