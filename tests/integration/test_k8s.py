"""Unikernel pods under real Kubernetes (issue 23): one single-node v1.20 cluster for the module.

The cluster (k8s_cluster.py) runs in namespaces the test makes; its binaries come from Debian's
`kubernetes` source package (scripts/build-k8s.sh builds them when absent). Unikernel pods select
ukvm-oci with a RuntimeClass (`runtimeClassName: ukvm`); runc pods (a static C HTTP server) run
beside them through the same containerd, as the baseline.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, needs_kvm
from k8s_cluster import NODE_IP, PAUSE_IMAGE, POD_SUBNET, Cluster, cgroup_mounts, ensure_binaries, missing, wait_for

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="the cluster's namespaces need root"),
              pytest.mark.skipif(missing() is not None, reason=missing() or "")]

IMAGES = {name: f"docker.io/library/ukvm-k8s-{name}:1" for name in
          ("httpd", "hello", "exit7", "abort", "static-httpd", "serve")}
SERVE_PORT, METRICS_PORT = 8080, 9100


def oci_build(*args) -> None:
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", "build", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def build_images(work, guest) -> list:
    """Image archives: the lwIP example, hello, a guest exiting 7, an aborting guest (ukvm oci
    build); the static C server and the pause program as ordinary images (for runc)."""
    from ukvm.oci.image import write_archive
    hello = work / "hello.hvt"
    subprocess.run([sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello], check=True,
                   capture_output=True, timeout=120)
    httpd = work / "httpd.hvt"
    subprocess.run([sys.executable, ROOT / "examples" / "httpd" / "build.py", "-o", httpd], check=True,
                   capture_output=True, timeout=900)
    oci_build(httpd, "-o", work / "httpd.tar", "--tag", IMAGES["httpd"])
    oci_build(httpd, "-o", work / "serve.tar", "--tag", IMAGES["serve"], "--serve", "--guest-port=80",
              f"--port={SERVE_PORT}", f"--metrics-port={METRICS_PORT}", "--pool=2")
    oci_build(hello, "-o", work / "hello.tar", "--tag", IMAGES["hello"], "--cmdline", "from a pod")
    oci_build(guest("test_exit", cpl0=False), "-o", work / "exit7.tar", "--tag", IMAGES["exit7"], "--cmdline", "7")
    oci_build(guest("test_abort", cpl0=False), "-o", work / "abort.tar", "--tag", IMAGES["abort"])
    tars = [work / f"{n}.tar" for n in ("httpd", "serve", "hello", "exit7", "abort")]
    for name, src, image in (("pause", ROOT / "tests" / "oci" / "pause.c", PAUSE_IMAGE),
                             ("static-httpd", ROOT / "tests" / "k8s" / "static_httpd.c", IMAGES["static-httpd"])):
        exe = work / name
        subprocess.run(["gcc", "-static", "-O2", "-o", exe, src], check=True, timeout=120)
        write_archive(str(work / f"{name}.tar"), [(f"/{name}", exe.read_bytes(), 0o755)], {"Entrypoint": [f"/{name}"]},
                      {}, image)
        tars.append(work / f"{name}.tar")
    return tars


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, guest):
    ensure_binaries()
    work = tmp_path_factory.mktemp("k8s")
    tars = build_images(tmp_path_factory.mktemp("k8s-images"), guest)
    c = Cluster(work)
    try:
        for tar in tars:
            c.ctr("images", "import", tar)
        yield c
    finally:
        c.close()


def pod_spec(image: str, unikernel: bool, restart: str = "Always", **extra) -> dict:
    container = {"name": "app", "image": image, "imagePullPolicy": "Never"}
    if image in (IMAGES["httpd"], IMAGES["static-httpd"]):
        container["ports"] = [{"containerPort": 80}]
        container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 80}, "periodSeconds": 1}
    if unikernel:     # the tender's share (ukvm-oci: 48 MiB) and the guest's memory
        container["resources"] = {"limits": {"memory": "256Mi" if image == IMAGES["serve"] else "128Mi"}}
    spec = {"containers": [container], "restartPolicy": restart, "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 10, **extra}
    if unikernel:
        spec["runtimeClassName"] = "ukvm"
    return spec


def deployment(name: str, image: str, unikernel: bool, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(image, unikernel)}}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]}}


def ready_pods(c: Cluster, app: str, count: int, timeout: float = 120) -> list[dict]:
    def ready():
        pods = [p for p in c.pods(f"app={app}") if not p["metadata"].get("deletionTimestamp")]
        ok = [p for p in pods if any(cd["type"] == "Ready" and cd["status"] == "True"
                                     for cd in p["status"].get("conditions", []))]
        return ok if len(ok) == count == len(pods) else None
    return wait_for(ready, timeout, step=0.5, what=f"{count} ready pods of {app} ({c.tail('kubelet', 5)})")


def delete_and_wait(c: Cluster, kind: str, name: str, selector: str, timeout: float = 180) -> None:
    """Delete an object and wait (bounded) until no pod of `selector` is left in the API."""
    c.kubectl("delete", kind, name, "--wait=false")
    wait_for(lambda: not c.pods(selector), timeout, step=0.5, what=f"the pods of {name} to go")


def test_node_is_registered_with_the_runtime_class(cluster):
    node = cluster.get("node", "ukvm-node")
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert cluster.get("runtimeclass", "ukvm")["handler"] == "ukvm"


def test_unikernel_deployment_behind_a_service_scales_answers_and_goes(cluster):
    """Two lwIP pods behind a ClusterIP Service; each answers on its pod IP (a VM of its own:
    its request counter), the Service answers; scaled to three, the new pod answers too; deleted,
    its pods go. A runc Deployment of the same shape goes the same way (the baseline)."""
    c = cluster
    c.apply(deployment("web", IMAGES["httpd"], True, 2), service("web"))
    pods = ready_pods(c, "web", 2)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith(POD_SUBNET.rsplit(".", 2)[0]) for ip in ips), ips
    for ip in ips:
        body = c.http(f"http://{ip}/pod")
        assert "ukvm lwIP httpd" in body and "path: /pod" in body, body[:200]
    cluster_ip = c.get("service", "web")["spec"]["clusterIP"]
    body = wait_for(lambda: c.http(f"http://{cluster_ip}/svc", timeout=3), 60, step=0.5,
                    what=f"the Service at {cluster_ip} ({c.tail('kube-proxy', 5)})")
    assert "ukvm lwIP httpd" in body and "path: /svc" in body, body[:200]
    c.kubectl("scale", "deployment", "web", "--replicas=3")
    pods = ready_pods(c, "web", 3)
    new = {p["status"]["podIP"] for p in pods} - ips
    assert len(new) == 1, new
    assert "path: /new" in c.http(f"http://{new.pop()}/new")
    logs = c.kubectl("logs", pods[0]["metadata"]["name"]).stdout
    assert "httpd: listening" in logs, logs[:500]
    delete_and_wait(c, "deployment", "web", "app=web")
    c.kubectl("delete", "service", "web")
    c.apply(deployment("base", IMAGES["static-httpd"], False, 2))
    for p in ready_pods(c, "base", 2):
        assert c.http(f"http://{p['status']['podIP']}/") == "static httpd\n"
    delete_and_wait(c, "deployment", "base", "app=base")     # how long each takes: bench/k8s_cluster.py


def test_a_unikernel_pod_runs_to_completion(cluster):
    c = cluster
    exit7 = pod_spec(IMAGES["exit7"], True, restart="Never")
    # Nothing in a unikernel writes /dev/termination-log: kubelet takes the log's tail instead.
    exit7["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "labels": {"app": "hello"}},
             "spec": pod_spec(IMAGES["hello"], True, restart="Never")},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exit7", "labels": {"app": "exit7"}},
             "spec": exit7})

    def ended():
        phases = tuple(c.get("pod", name)["status"].get("phase") for name in ("hello", "exit7"))
        return phases if all(x in ("Succeeded", "Failed") for x in phases) else None
    phases = wait_for(ended, 120, step=0.5, what="both pods to end")
    assert phases == ("Succeeded", "Failed"), phases
    for name, code in (("hello", 0), ("exit7", 7)):
        state = c.get("pod", name)["status"]["containerStatuses"][0]["state"]
        assert state["terminated"]["exitCode"] == code, state
    message = c.get("pod", "exit7")["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
    assert "Solo5: solo5_exit(7) called" in message, message
    logs = c.kubectl("logs", "hello").stdout
    assert "Hello, World" in logs and "Command line is: 'from a pod'" in logs, logs
    c.kubectl("delete", "pod", "hello", "exit7", "--wait=true", timeout=120)


def pod_cgroups(c: Cluster, uid: str) -> list[str]:
    """The pod's cgroup directories (kubelet names them pod<UID>) in the hierarchies kubelet
    manages: the v1 ones, or the unified one on a pure v2 host. On a hybrid host runc (for the
    pause container) also makes the pod's directory in the unified hierarchy, which kubelet 1.20
    never removes, for runc pods as for ours; the cluster's tear-down removes it."""
    mounts = cgroup_mounts(("cgroup",)) or cgroup_mounts()
    return [d for mount in mounts for d, _, _ in os.walk(f"{mount}/{c.tag}") if f"pod{uid}" in d]


def pod_processes(c: Cluster, uid: str) -> dict[int, str]:
    """pid -> command line of every process in the pod's cgroups (the tender is placed there)."""
    out = {}
    for d in pod_cgroups(c, uid):
        try:
            pids = Path(d, "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in map(int, pids):
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


def test_a_crashing_unikernel_is_restarted_then_removed_without_trace(cluster):
    c = cluster
    c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash", "labels": {"app": "crash"}},
             "spec": pod_spec(IMAGES["abort"], True)})
    status = wait_for(lambda: (s := c.get("pod", "crash")["status"].get("containerStatuses"))
                      and s[0]["restartCount"] >= 2 and s[0], 120, step=1, what="two restarts")
    last = status["lastState"]["terminated"]
    assert last["exitCode"] != 0, last
    pod = c.get("pod", "crash")
    uid = pod["metadata"]["uid"]
    ids = [s["containerID"].split("//")[1] for s in pod["status"]["containerStatuses"] if s.get("containerID")]
    assert pod_cgroups(c, uid), "the pod has no cgroup under the test's cgroupRoot"
    c.kubectl("delete", "pod", "crash", "--wait=true", timeout=120)
    state = c.in_ns("sh", "-c", "ls /run/containerd/runc/k8s.io/ukvm-oci 2>/dev/null", mount=True).stdout.split()
    assert ids and not set(ids) & set(state), state                  # ukvm-oci's state went
    assert not set(ids) & set(c.ctr("containers", "ls", "-q").stdout.split())
    # kubelet removes a pod's cgroups only once no process is left in them: the tender and pause
    # (which ukvm-oci and runc placed there) are gone, and so are their cgroups.
    wait_for(lambda: not pod_cgroups(c, uid), 30, what="the pod's cgroups to go")


def test_pod_and_container_stats_come_back(cluster):
    c = cluster
    c.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stats", "labels": {"app": "stats"}},
             "spec": pod_spec(IMAGES["httpd"], True)})
    pod = ready_pods(c, "stats", 1)[0]
    uid = pod["metadata"]["uid"]
    tenders = [cmd for cmd in pod_processes(c, uid).values() if " run " in cmd and "--mem=" in cmd]
    assert len(tenders) == 1, pod_processes(c, uid)                 # ukvm-oci placed it in the pod's cgroup
    # kubectl exec, through the API server, kubelet and containerd to ukvm-oci: refused in one line.
    p = c.kubectl("exec", "stats", "--", "sh", "-c", "true", check=False)
    assert p.returncode != 0 and "a unikernel container has no processes or shell" in p.stdout + p.stderr, p

    def summary():
        text = c.http(f"http://{NODE_IP}:10255/stats/summary", timeout=10)
        pods = [p for p in json.loads(text or "{}").get("pods", []) if p["podRef"]["uid"] == uid]
        if pods and pods[0].get("containers") and pods[0]["containers"][0].get("memory", {}).get("workingSetBytes"):
            return pods[0]
        return None
    stats = wait_for(summary, 60, step=1, what="the pod in kubelet's stats summary")
    container = stats["containers"][0]
    assert container["name"] == "app"
    assert container["cpu"]["usageCoreNanoSeconds"] > 0, container
    # The tender's memory is the container's: at least the guest's pages it touched.
    assert container["memory"]["workingSetBytes"] > 1 << 20, container
    c.kubectl("delete", "pod", "stats", "--wait=true", timeout=120)


def test_serve_pods_behind_a_service_answer_each_request_from_a_fresh_instance(cluster):
    """`ukvm oci build --serve`: each pod runs `ukvm serve` on its pod IP. Two pods behind one
    Service answer every request from a fresh clone; scaled to three, the third takes its share
    (its own metrics, found the way Prometheus finds them: the pod's scrape annotations)."""
    c = cluster
    fleet = deployment("fleet", IMAGES["serve"], True, 2)
    template = fleet["spec"]["template"]
    template["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                           "prometheus.io/path": "/metrics"}
    container = template["spec"]["containers"][0]
    container["ports"] = [{"containerPort": SERVE_PORT, "name": "http"}, {"containerPort": METRICS_PORT,
                                                                        "name": "metrics"}]
    # No readiness probe (pod_spec gives none to this image): serve listens before its first boot,
    # and the request counters count only this test's requests (the docs' Deployment has one).
    svc = service("fleet")
    svc["spec"]["ports"] = [{"port": 80, "targetPort": SERVE_PORT}]
    c.apply(fleet, svc)
    ready_pods(c, "fleet", 2)
    cluster_ip = c.get("service", "fleet")["spec"]["clusterIP"]
    wait_for(lambda: c.http(f"http://{cluster_ip}/", timeout=3), 60, step=0.5, what="the fleet's Service")
    for i in range(20):
        body = c.http(f"http://{cluster_ip}/r{i}")
        assert "requests served by this VM instance: 1" in body and f"path: /r{i}" in body, body[:200]
    c.kubectl("scale", "deployment", "fleet", "--replicas=3")
    pods = ready_pods(c, "fleet", 3)
    # Ready is "started"; serve answers once its snapshot and clones exist.
    for p in pods:
        wait_for(lambda: c.http(f"http://{p['status']['podIP']}:{SERVE_PORT}/", timeout=3), 60, step=0.5,
                 what=f"serve answering in {p['metadata']['name']}")
    before = {p["status"]["podIP"]: scraped_requests(c, p) for p in pods}
    wait_for(lambda: len(c.get("endpoints", "fleet")["subsets"][0].get("addresses", [])) == 3, 30,
             what="three endpoints")
    for i in range(40):
        body = c.http(f"http://{cluster_ip}/s{i}")
        assert "requests served by this VM instance: 1" in body, body[:200]
    def counted():     # a request is counted when serve reads the client's close, just after the answer
        now = {p["status"]["podIP"]: scraped_requests(c, p) for p in pods}
        return now if sum(now.values()) - sum(before.values()) >= 40 else None
    after = wait_for(counted, 30, step=0.5, what="40 requests counted")
    assert all(after[ip] > before[ip] for ip in after), (before, after)     # each of the three served
    assert sum(after.values()) - sum(before.values()) == 40, (before, after)
    # Not waited for: kubelet 1.20 may leave a deleted pod's sandbox to its one-minute garbage
    # collection (the deletion test above shows pods going; the cluster goes with the module).
    c.kubectl("delete", "deployment,service", "fleet", "--wait=false")


def scraped_requests(c: Cluster, pod: dict) -> float:
    """ukvm_requests_total{outcome="ok"} from the pod, at the port its annotations name."""
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    text = c.http(f"http://{pod['status']['podIP']}:{notes['prometheus.io/port']}{notes['prometheus.io/path']}")
    for line in text.splitlines():
        if line.startswith('ukvm_requests_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0
