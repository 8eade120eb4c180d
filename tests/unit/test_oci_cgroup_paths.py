"""oci/cgroups.py without containerd: cgroupsPath forms, mount discovery, and the limit files
written for cgroup v1 and v2 (v2 into a directory laid out as a cgroup2 tree would be)."""
import pytest

from ukvm.oci.cgroups import Cgroup, mounts, relative_path
from ukvm.oci.state import OciError


def test_cgroupfs_paths():
    assert relative_path("/kubepods/besteffort/pod1/c1", "c1", False) == ("/kubepods/besteffort/pod1/c1", False)
    assert relative_path("sub/c1", "c1", False) == ("sub/c1", True)          # below the runtime's own
    assert relative_path("", "c1", False) == ("/c1", False)
    with pytest.raises(OciError, match="needs --systemd-cgroup"):
        relative_path("system.slice:cri:c1", "c1", False)


def test_systemd_paths():
    assert relative_path("kubepods-besteffort-pod12.slice:cri-containerd:abc", "abc", True) == \
        ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope", False)
    assert relative_path(":ctr:x", "x", True) == ("/system.slice/ctr-x.scope", False)
    assert relative_path("-.slice::x", "x", True) == ("/x.scope", False)
    for bad in ("a/b", "kubepods--x.slice:p:n", "notaslice:p:n"):
        with pytest.raises(OciError, match="invalid slice name"):
            relative_path(bad if ":" in bad else f"{bad}:p:n", "n", True)
    with pytest.raises(OciError, match="expected slice:prefix:name"):
        relative_path("/plain/path", "n", True)


def test_mounts_v1_and_v2(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /sys/fs/cgroup/unified rw shared:11 - cgroup2 cgroup2 rw,nsdelegate\n"
        "33 25 0:29 / /tmp rw shared:12 - tmpfs tmpfs rw\n")
    v1, v2 = mounts(str(info))
    assert v1 == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                  "memory": "/sys/fs/cgroup/memory"} and v2 == "/sys/fs/cgroup/unified"


def fake_v2(tmp_path):
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    g = Cgroup.__new__(Cgroup)
    g.version, g.roots, g.made = 2, {"": str(root)}, []
    g.dirs = {"": str(root / "kubepods" / "c1")}
    return g, root


def test_v2_limits_and_controllers(tmp_path, monkeypatch):
    g, root = fake_v2(tmp_path)
    real_mkdir = __import__("os").mkdir

    def mkdir(p, mode=0o777):        # a cgroup2 directory comes with its interface files
        real_mkdir(p, mode)
        for name in ("cgroup.subtree_control", "cgroup.procs"):
            open(f"{p}/{name}", "w").close()
    monkeypatch.setattr("ukvm.oci.cgroups.os.mkdir", mkdir)
    g.create({"cpu": {"quota": 20000, "period": 100000, "shares": 1024}, "memory": {"limit": 64 << 20},
              "pids": {"limit": 10}})
    leaf = root / "kubepods" / "c1"
    assert g.made == [str(root / "kubepods"), str(leaf)]
    assert (leaf / "cpu.max").read_text() == "20000 100000"
    assert (leaf / "cpu.weight").read_text() == "39"          # runc's mapping of 1024 shares
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "pids.max").read_text() == "10"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu+memory+pids+cpuset"
    assert (root / "kubepods" / "cgroup.subtree_control").read_text() == "+cpu+memory+pids+cpuset"


def test_v1_limits(tmp_path):
    g = Cgroup.__new__(Cgroup)
    g.version, g.made = 1, []
    g.dirs = {c: str(tmp_path / c) for c in ("cpu", "memory", "pids")}
    for d in g.dirs.values():
        (tmp_path / d).mkdir()
    g._limits({"cpu": {"quota": 50000, "shares": 512}, "memory": {"limit": 1 << 30}, "pids": {"limit": -1}})
    assert (tmp_path / "cpu" / "cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "cpu" / "cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "cpu" / "cpu.shares").read_text() == "512"
    assert (tmp_path / "memory" / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert (tmp_path / "pids" / "pids.max").read_text() == "max"
