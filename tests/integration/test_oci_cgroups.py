"""ukvm-oci enforces the container's resources, through real containerd.

The spec (written here, run with `ctr run --config`) gives the container a cgroupsPath and CPU,
memory and pids limits, and a PID namespace; ukvm-oci must place the tender there as runc would
place its process. Checked from the cgroup files themselves (cgroup v1 here, v2 elsewhere):
a spinning unikernel limited to 0.2 CPU uses about that much (a loose bound over a bounded
interval: a behaviour check, not a timing); the memory charged includes the tender's own;
pids.max is the spec's and holds; killing every task of the cgroup ends the container.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import needs_kvm
from containerd_env import Containerd, missing
from ukvm.oci.cgroups import Cgroup
from ukvm.oci.image import ANNOTATION, urunc_json

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="containerd and namespaces need root"),
              pytest.mark.skipif(missing() is not None, reason=missing() or "")]

PARENT = f"ukvmtest-cg{os.getpid()}"


@pytest.fixture(scope="module")
def env(tmp_path_factory, guest):
    work = tmp_path_factory.mktemp("cgroups")
    rootfs = work / "rootfs"
    (rootfs / "unikernel").mkdir(parents=True)
    (rootfs / "unikernel" / "app.hvt").write_bytes(guest("test_hostile", cpl0=False).read_bytes())
    (rootfs / "urunc.json").write_bytes(urunc_json({ANNOTATION + "binary": "/unikernel/app.hvt",
                                                    ANNOTATION + "hypervisor": "hvt", ANNOTATION + "cmdline": "loop"}))
    e = Containerd(work / "containerd")
    e.rootfs, e.work = rootfs, work
    try:
        yield e
    finally:
        e.close()


def spec(env, cid, resources, cgroups_path):
    s = json.loads(subprocess.run(["ctr", "oci", "spec"], capture_output=True, text=True, check=True).stdout)
    s["root"] = {"path": str(env.rootfs), "readonly": True}
    s["process"]["args"] = ["/unikernel/app.hvt"]
    s["linux"]["resources"] = resources
    s["linux"]["cgroupsPath"] = cgroups_path
    path = env.work / f"{cid}.json"
    path.write_text(json.dumps(s))
    return path


def start(env, cid, resources, cgroups_path=None, *ctr_args):
    """Run the spinner; its pid as containerd reports it (in containerd's PID namespace)."""
    cgroups_path = cgroups_path or f"/{PARENT}/{cid}"
    env.ctr("run", "-d", *ctr_args, "--runc-binary", env.ukvm_oci, "--config", spec(env, cid, resources, cgroups_path),
            cid, timeout=60)
    tasks = env.ctr("task", "ls").stdout.split()
    return int(tasks[tasks.index(cid) + 1])


def nspids(pid: int) -> list[str]:
    """The process's pid in each PID namespace from ours down: [ours, containerd's, ...]."""
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1:] for line in f if line.startswith("NSpid:"))


def in_cgroup(group: Cgroup, ctr_pid: int) -> int:
    """Our pid of the task containerd knows as `ctr_pid`, found among the cgroup's processes."""
    found = [p for p in group.pids() if nspids(p)[1:2] == [str(ctr_pid)]]
    assert len(found) == 1, (ctr_pid, group.pids())
    return found[0]


def stop(env, cid):
    env.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    deadline = time.monotonic() + 30
    while "RUNNING" in env.ctr("task", "ls").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    env.ctr("task", "delete", "--force", cid, check=False)
    env.ctr("containers", "delete", cid, check=False)


def cpu_usage_ns(group: Cgroup) -> int:
    if group.version == 2:
        with open(group.file("cpu", "cpu.stat")) as f:
            return int(dict(line.split() for line in f)["usage_usec"]) * 1000
    with open(group.file("cpuacct", "cpuacct.usage")) as f:
        return int(f.read())


def throttled(group: Cgroup) -> int:
    """Periods in which the cgroup hit its CPU quota (cpu.stat, v1 and v2 alike)."""
    stat = dict(line.split() for line in read(group.file("cpu", "cpu.stat")).splitlines())
    return int(stat["nr_throttled"])


def read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def test_cpu_memory_and_pid_namespace(env):
    cid = "spin"
    limit = 256 << 20
    pid = start(env, cid, {"cpu": {"quota": 20000, "period": 100000}, "memory": {"limit": limit},
                           "pids": {"limit": 64}})
    try:
        group = Cgroup(f"/{PARENT}/{cid}", cid, False)
        pid = in_cgroup(group, pid)                                  # the tender itself
        for d in set(group.dirs.values()):                           # in every hierarchy
            assert pid in map(int, read(os.path.join(d, "cgroup.procs")).split()), d
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        assert status["NSpid"].split()[-1] == "1"                    # its own PID namespace, as init
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
        time.sleep(0.5)                                              # past the tender's start-up
        throttled0 = throttled(group)
        u0, t0 = cpu_usage_ns(group), time.monotonic()
        time.sleep(2.0)
        share = (cpu_usage_ns(group) - u0) / ((time.monotonic() - t0) * 1e9)
        assert share <= 0.25, share                                 # at most the quota (and a little)
        assert throttled(group) > throttled0                        # spinning: held back by the quota
        v2 = group.version == 2
        assert int(read(group.file("memory", "memory.max" if v2 else "memory.limit_in_bytes"))) == limit
        usage = int(read(group.file("memory", "memory.current" if v2 else "memory.usage_in_bytes")))
        with open(f"/proc/{pid}/status") as f:                     # the interpreter and ukvm: not the guest
            tender_rss = int(next(line.split()[1] for line in f if line.startswith("RssAnon:"))) * 1024
        assert usage >= tender_rss > 1 << 20, (usage, tender_rss)
        metrics = env.ctr("task", "metrics", "--format", "json", cid).stdout
        assert metrics.strip() and "usage" in metrics.lower(), metrics
    finally:
        stop(env, cid)
    assert not any(os.path.exists(d) for d in group.dirs.values())    # delete removed the cgroup


def test_pids_limit_holds(env):
    cid = "pids"
    pid = start(env, cid, {"pids": {"limit": 16}})
    try:
        group = Cgroup(f"/{PARENT}/{cid}", cid, False)
        assert read(group.file("pids", "pids.max")) == "16"
        tasks = int(read(group.file("pids", "pids.current")))
        assert 1 <= tasks <= 16
        # A helper joins the cgroup and forks sleepers until the kernel says no.
        probe = ("import os, sys, time\n"
                 "open(sys.argv[1], 'w').write('0')\n"
                 "kids, refused = [], 0\n"
                 "for _ in range(40):\n"
                 "    try:\n"
                 "        k = os.fork()\n"
                 "    except BlockingIOError:\n"
                 "        refused += 1\n"
                 "        continue\n"
                 "    if k == 0:\n"
                 "        time.sleep(5); os._exit(0)\n"
                 "    kids.append(k)\n"
                 "print(len(kids), refused)\n"
                 "for k in kids:\n"
                 "    os.kill(k, 9); os.waitpid(k, 0)\n")
        p = subprocess.run(["python3", "-I", "-c", probe, group.file("pids", "cgroup.procs")], capture_output=True,
                           text=True, timeout=60)
        made, refused = map(int, p.stdout.split())
        assert refused > 0 and tasks + 1 + made <= 16, (tasks, made, refused, p.stderr)
        in_cgroup(group, pid)
    finally:
        stop(env, cid)


def test_killing_the_cgroup_ends_the_tender(env):
    cid = "killed"
    pid = start(env, cid, {})
    try:
        group = Cgroup(f"/{PARENT}/{cid}", cid, False)
        pid = in_cgroup(group, pid)
        victims = group.pids()
        if group.version == 2:
            with open(os.path.join(group.dirs[""], "cgroup.kill"), "w") as f:
                f.write("1")
        else:
            for v in victims:
                os.kill(v, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "STOPPED" not in env.ctr("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}/status") or "Z" in read(f"/proc/{pid}/stat").split()[2]
    finally:
        stop(env, cid)


def test_systemd_cgroup_path(env):
    """--systemd-cgroup (ctr --runc-systemd-cgroup): slice:prefix:name, placed where systemd puts it."""
    cid = "sd"
    slice_ = f"{PARENT.replace('-', '_')}-sub.slice"
    pid = start(env, cid, {"pids": {"limit": 32}}, f"{slice_}:ukvm:{cid}", "--runc-systemd-cgroup",
                "--cgroup", f"{slice_}:ukvm:{cid}")
    try:
        group = Cgroup(f"{slice_}:ukvm:{cid}", cid, True)
        assert group.dirs["pids"].endswith(f"/{PARENT.replace('-', '_')}.slice/{slice_}/ukvm-{cid}.scope")
        in_cgroup(group, pid)
        assert read(group.file("pids", "pids.max")) == "32"
    finally:
        stop(env, cid)
    assert not any(os.path.exists(d) for d in group.dirs.values())


def test_memory_limit_too_small_for_the_tender_is_one_line(env):
    cid = "tiny"
    p = env.ctr("run", "-d", "--runc-binary", env.ukvm_oci, "--config",
                spec(env, cid, {"memory": {"limit": 16 << 20}}, f"/{PARENT}/{cid}"), cid, check=False, timeout=60)
    env.ctr("containers", "delete", cid, check=False)
    assert p.returncode != 0 and "the tender needs" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_pause_and_resume_freeze_the_tender(env):
    """`ctr task pause`/`resume` (runc's pause/resume): the cgroup frozen, the spinning guest
    uses no CPU while paused, and spins again after."""
    cid = "frozen"
    start(env, cid, {"cpu": {"quota": 20000, "period": 100000}})
    try:
        group = Cgroup(f"/{PARENT}/{cid}", cid, False)

        def status():
            tasks = env.ctr("task", "ls").stdout.split()
            return tasks[tasks.index(cid) + 2]

        env.ctr("task", "pause", cid)
        assert status() == "PAUSED"
        frozen_at = cpu_usage_ns(group)
        time.sleep(0.5)
        assert cpu_usage_ns(group) == frozen_at          # frozen: not one nanosecond more
        env.ctr("task", "resume", cid)
        assert status() == "RUNNING"
        deadline = time.monotonic() + 30                 # spinning again
        while cpu_usage_ns(group) == frozen_at:
            assert time.monotonic() < deadline, "no CPU used after resume"
            time.sleep(0.05)
        env.ctr("task", "pause", cid)
        env.ctr("task", "kill", "-s", "SIGKILL", cid)    # a paused container can still be killed
        deadline = time.monotonic() + 30
        while status() != "STOPPED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop(env, cid)
