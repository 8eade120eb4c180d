"""k8s_cluster.py: a whole single-node Kubernetes v1.20 cluster, inside namespaces the test makes.

The binaries are built from Debian's `kubernetes` source package by scripts/build-k8s.sh (cached
in ~/.cache/ukvm/k8s-v1.20.2). Everything runs under one `unshare --mount --pid --net --fork
--kill-child`: ending that process ends every component, shim, container and tender. Inside its
mount namespace, tmpfs covers what kubelet, containerd and CNI write outside their configured
directories (/var/lib/kubelet, /var/log/pods, /var/log/containers, /var/lib/cni, /run/containerd,
/run/netns), and files with the values kubelet insists on are bind-mounted over the kernel
sysctls it would otherwise write (`protectKernelDefaults: true` then only checks them). The node's
address is on a veth (both ends inside) in the private network namespace, which also carries
its default route (so that Service addresses route). kubelet's QoS and pod cgroups
live under a test-specific cgroupRoot, removed depth-first afterwards; the mount points made for
the tmpfs are removed by the last cluster to end (several test runs may share the machine).
Nothing reaches outside (../shared/k8s/README.md).

Components: etcd (Debian's etcd-server, data on tmpfs), kube-apiserver (self-signed certificates,
AlwaysAllow), kube-controller-manager, kube-scheduler, kube-proxy (iptables mode), containerd 1.6
with a `ukvm` runtime handler (the runc shim with BinaryName = ukvm-oci) beside runc and a CNI
bridge, and a kubelet registered as node `ukvm-node`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = Path(os.environ.get("UKVM_K8S_DIR", Path.home() / ".cache" / "ukvm" / "k8s-v1.20.2"))
BIN = K8S_DIR / "bin"
BINARIES = ("kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl")
PAUSE_IMAGE = "docker.io/library/ukvm-k8s-pause:1"
NODE = "ukvm-node"
NODE_IP = "10.99.0.1"
POD_SUBNET = "10.98.0.0/24"
SERVICE_RANGE = "10.97.0.0/24"
# What kubelet would write to /proc/sys (pkg/kubelet/cm setupKernelTunables).
KERNEL_DEFAULTS = {"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
                   "kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000",
                   "kernel/keys/root_maxbytes": "25000000"}
TMPFS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/run/containerd", "/run/netns")
# The tmpfs need their mount points on the host. Removing a directory that is a mount point in
# another mount namespace detaches that mount there (Linux >= 3.18): a cluster must not remove
# the mount points while another cluster (another engineer's test run) uses them. Each cluster
# holds a shared lock (on /run itself: nothing to leave behind); the one that can take it
# exclusively at its end removes the directories any cluster made (listed in MADE_DIRS).
LOCK = "/run"
MADE_DIRS = "/run/ukvm-k8s-tests.made"
# The namespace's init: reaps whatever is reparented to it (shims, tenders); SIGTERM ends it.
REAPER = ("import os, signal, time\nsignal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
          "while True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.2)\n")


def ensure_binaries() -> None:
    """Build the binaries when absent (scripts/build-k8s.sh; minutes, once per cache)."""
    if all(os.access(BIN / b, os.X_OK) for b in BINARIES) and shutil.which("etcd"):
        return
    env = dict(os.environ, UKVM_K8S_DIR=str(K8S_DIR))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "build-k8s.sh")], env=env, capture_output=True, text=True,
                       timeout=3600)
    assert p.returncode == 0, f"scripts/build-k8s.sh failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}"


def missing() -> str | None:
    for tool in ("containerd", "ctr", "runc", "unshare", "nsenter", "ip", "tc", "iptables", "openssl", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test.sh installs it)"
    if not os.path.exists("/usr/lib/cni/bridge"):
        return "needs the CNI plugins in /usr/lib/cni (containernetworking-plugins)"
    return None


def cgroup_mounts(kinds: tuple[str, ...] = ("cgroup", "cgroup2")) -> list[str]:
    """Every cgroup hierarchy's mount point (v1, "cgroup": one per controller set; v2: the unified one)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] in kinds:
                out.append(pre.split()[4])
    return out


def wait_for(predicate, timeout: float, step: float = 0.2, what: str = "condition"):
    """predicate()'s first true value, polled at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class Cluster:
    def __init__(self, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.tag = f"ukvmk8s{os.getpid()}"
        self.cgroup_root = f"/{self.tag}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.lock = os.open(LOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.lock, fcntl.LOCK_SH)
        made = [d for d in TMPFS if not os.path.exists(d)]
        for d in made:
            os.makedirs(d, exist_ok=True)
        if made:
            with open(MADE_DIRS, "a") as f:
                f.write("".join(d + "\n" for d in made))
        self.init: subprocess.Popen | None = None
        self.kubeconfig = work / "admin.kubeconfig"
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # --- start-up -----------------------------------------------------------------------------------
    def _start(self) -> None:
        w = self.work
        self._pki()
        self._configs()
        for mount in cgroup_mounts():          # kubelet wants its cgroupRoot to exist everywhere
            path = Path(mount) / self.tag
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):      # a new cpuset is empty until given these
                if (path / name).exists():
                    (path / name).write_text((Path(mount) / name).read_text())
        sysctl = w / "sysctl"
        mounts = [f"mkdir -p {d} && mount -t tmpfs tmpfs {d}" for d in (*TMPFS, w / "tmpfs")]
        for key, value in KERNEL_DEFAULTS.items():
            (sysctl / key).parent.mkdir(parents=True, exist_ok=True)
            (sysctl / key).write_text(value + "\n")
            mounts.append(f"mount --bind {sysctl / key} /proc/sys/{key}")
        script = " && ".join([
            *mounts, "ip link set lo up", f"ip link add {self.tag} type veth peer name {self.tag}p",
            f"ip link set {self.tag}p up",
            f"ip addr add {NODE_IP}/24 dev {self.tag}", f"ip link set {self.tag} up",
            f"ip route add default dev {self.tag}", f"touch {w}/ns-ready",
            f"exec {sys.executable} -I -S -c '{REAPER}'"])
        log = open(w / "init.log", "wb")
        self.logs.append(log)
        self.init = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--net", "--mount-proc", "--kill-child",
                                      "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: (w / "ns-ready").exists() or self.init.poll() is not None, 30, what="the namespaces")
        assert self.init.poll() is None, (w / "init.log").read_text()
        self.ns_pid = int(Path(f"/proc/{self.init.pid}/task/{self.init.pid}/children").read_text().split()[0])

        self._run("etcd", "etcd", "--name", "ukvm", f"--data-dir={w}/tmpfs/etcd", "--listen-client-urls=http://127.0.0.1:2379",
                  "--advertise-client-urls=http://127.0.0.1:2379", "--listen-peer-urls=http://127.0.0.1:2380",
                  "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                  "--initial-cluster=ukvm=http://127.0.0.1:2380")
        pki = w / "pki"
        self._run("apiserver", BIN / "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0",
                  "--secure-port=6443", "--insecure-port=0", f"--advertise-address={NODE_IP}",
                  f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
                  f"--client-ca-file={pki}/ca.crt", f"--service-account-key-file={pki}/sa.pub",
                  f"--service-account-signing-key-file={pki}/sa.key",
                  "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                  f"--service-cluster-ip-range={SERVICE_RANGE}", "--authorization-mode=AlwaysAllow",
                  # No service-account tokens in pods: a unikernel has no file system to mount them in.
                  "--disable-admission-plugins=ServiceAccount", "--enable-priority-and-fairness=false",
                  f"--kubelet-client-certificate={pki}/admin.crt", f"--kubelet-client-key={pki}/admin.key",
                  "--kubelet-preferred-address-types=InternalIP", "--profiling=false")
        self._run("containerd", "containerd", "--config", w / "containerd.toml")
        wait_for(lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 90,
                 step=0.5, what=f"kube-apiserver ({self.tail('apiserver')})")
        wait_for(lambda: self.ctr("version", check=False).returncode == 0, 60, what="containerd")
        self._run("controller-manager", BIN / "kube-controller-manager", f"--kubeconfig={self.kubeconfig}",
                  "--leader-elect=false", f"--service-account-private-key-file={pki}/sa.key",
                  f"--root-ca-file={pki}/ca.crt", "--use-service-account-credentials=false",
                  "--controllers=*,-serviceaccount,-serviceaccount-token", "--port=0", "--secure-port=0",
                  "--node-monitor-period=2s", "--profiling=false")
        self._run("scheduler", BIN / "kube-scheduler", f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
                  "--port=0", "--secure-port=0", "--profiling=false")
        self._run("kubelet", BIN / "kubelet", f"--config={w}/kubelet.yaml", f"--kubeconfig={self.kubeconfig}",
                  "--container-runtime=remote", f"--container-runtime-endpoint=unix://{w}/containerd.sock",
                  f"--hostname-override={NODE}", f"--node-ip={NODE_IP}", "--root-dir=/var/lib/kubelet",
                  "--cert-dir=/var/lib/kubelet/pki", f"--v={os.environ.get('UKVM_K8S_KUBELET_V', '0')}")
        self._run("kube-proxy", BIN / "kube-proxy", f"--config={w}/kube-proxy.yaml")
        wait_for(self.node_ready, 120, step=0.5, what=f"node Ready ({self.tail('kubelet')})")
        self.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "ukvm"},
                    "handler": "ukvm"})

    def _pki(self) -> None:
        pki = self.work / "pki"
        pki.mkdir()

        def ssl(*args):
            subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60, cwd=pki)
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=ukvm-test-ca")
        first_service_ip = SERVICE_RANGE.rsplit(".", 1)[0] + ".1"
        (pki / "san.cnf").write_text(f"subjectAltName=IP:127.0.0.1,IP:{NODE_IP},IP:{first_service_ip},"
                                     "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\n")
        for name, subj, ext in (("apiserver", "/CN=kube-apiserver", True), ("admin", "/O=system:masters/CN=admin", False)):
            ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
            ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *(("-extfile", "san.cnf") if ext else ()))
        ssl("genrsa", "-out", "sa.key", "2048")
        ssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "ukvm",
            "clusters": [{"name": "ukvm", "cluster": {"server": "https://127.0.0.1:6443",
                                                      "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"),
                                                 "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "ukvm", "context": {"cluster": "ukvm", "user": "admin"}}]}))

    def _configs(self) -> None:
        w = self.work
        # ukvm-oci as a node installs it (`ukvm oci launcher`): this checkout, started lean.
        subprocess.run([sys.executable, "-m", "ukvm", "oci", "launcher", w / "ukvm-oci"], check=True, timeout=60)
        (w / "cni").mkdir()
        (w / "manifests").mkdir()
        (w / "cni" / "10-ukvm-k8s.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "ukvm-k8s",
            "plugins": [{"type": "bridge", "bridge": "ukvmk8s0", "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "subnet": POD_SUBNET, "dataDir": str(w / "ipam"),
                                  "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        (w / "containerd.toml").write_text(f"""version = 2
root = "{w}/containerd-root"
state = "/run/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{w}/containerd.sock"
[ttrpc]
  address = "{w}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{w}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ukvm]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ukvm.options]
      BinaryName = "{w}/ukvm-oci"
""")
        (w / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "failSwapOn": False,
            "protectKernelDefaults": True, "makeIPTablesUtilChains": False,
            "staticPodPath": str(w / "manifests"), "fileCheckFrequency": "1s", "syncFrequency": "10s",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 10255,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "nodeStatusUpdateFrequency": "4s", "serializeImagePulls": False}))
        (w / "kube-proxy.yaml").write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "hostnameOverride": NODE, "clusterCIDR": POD_SUBNET,
            "bindAddress": "127.0.0.1", "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            # 0: leave the host-wide conntrack table size and timeouts alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}}))

    def _run(self, name: str, *cmd) -> None:
        log = open(self.work / f"{name}.log", "wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(["nsenter", "-t", str(self.ns_pid), "-m", "-n", "-p", "--",
                                             *map(str, cmd)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.work)

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.work / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- using it ------------------------------------------------------------------------------------
    def in_ns(self, *cmd, timeout: float = 60, input: str | None = None, check: bool = False,
              mount: bool = False) -> subprocess.CompletedProcess:
        """A command in the cluster's network namespace (the node's host side)."""
        ns = ["-n", "-m"] if mount else ["-n"]
        p = subprocess.run(["nsenter", "-t", str(self.ns_pid), *ns, "--", *map(str, cmd)], capture_output=True,
                           text=True, timeout=timeout, input=input)
        if check:
            assert p.returncode == 0, f"{' '.join(map(str, cmd))}: {p.stdout}{p.stderr}"
        return p

    def kubectl(self, *args, check: bool = True, input: str | None = None, timeout: float = 60):
        return self.in_ns(BIN / "kubectl", f"--kubeconfig={self.kubeconfig}", *args, input=input, check=check,
                          timeout=timeout)

    def get(self, *args) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, *objects: dict) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def ctr(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.in_ns("ctr", "--address", self.work / "containerd.sock", "--namespace", "k8s.io", *args,
                          check=check, timeout=timeout, mount=True)

    def http(self, url: str, timeout: float = 10) -> str:
        p = self.in_ns("curl", "-s", "-m", str(timeout), url, timeout=timeout + 10)
        return p.stdout if p.returncode == 0 else ""

    def node_ready(self) -> bool:
        p = self.kubectl("get", "node", NODE, "-o", "json", check=False)
        if p.returncode != 0:
            return False
        node = json.loads(p.stdout)
        conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        taints = node["spec"].get("taints") or []
        return conds.get("Ready") == "True" and not taints

    def pods(self, selector: str) -> list[dict]:
        return self.get("pods", "-l", selector)["items"]

    def process_alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    # --- tear-down -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.init is not None and self.init.poll() is None:
            # unshare ignores SIGTERM while it waits for its child; SIGKILL, and --kill-child ends
            # the namespace's init, and with it every process of the PID namespace.
            self.init.kill()
            self.init.wait(timeout=30)
        for p in self.procs.values():       # the nsenter parents end when their child does
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()
        for mount in cgroup_mounts():
            remove_cgroup_tree(Path(mount) / self.tag)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass                            # another cluster runs: the last one removes them
        else:
            try:
                with open(MADE_DIRS) as f:
                    made = set(f.read().split())
                for d in made:
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                os.unlink(MADE_DIRS)
            except FileNotFoundError:
                pass
        os.close(self.lock)


def remove_cgroup_tree(top: Path, timeout: float = 30) -> None:
    """rmdir a cgroup and everything below it, deepest first (a cgroup with tasks cannot go:
    the namespace's processes may take a moment to die)."""
    if not top.is_dir():
        return
    dirs = sorted((p for p, _, _ in os.walk(top)), key=lambda p: p.count("/"), reverse=True)
    deadline = time.monotonic() + timeout
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
