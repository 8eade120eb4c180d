"""oci/cgroups.py: the container's cgroup, made and limited as runc would, for the tender to join.

runc places a container's process in the spec's linux.cgroupsPath with the spec's limits;
ukvm-oci forks that process itself, so it does the same: one directory per hierarchy (cgroup v1:
one per mounted controller, as on the hosts here; v2: the unified tree, with the controllers
enabled down to it), CPU (CFS quota/period, shares), memory (the whole container: guest and
tender), pids, cpuset; then the process writes itself into cgroup.procs before anything else.
containerd's shim finds the cgroup from the process (/proc/PID/cgroup): `ctr task metrics`, CRI
stats and its OOM watcher then see the tender's usage, and killing the cgroup's tasks ends it.

cgroupsPath forms: `/a/b` (from the hierarchy's root), `a/b` (below the runtime's own cgroup),
and with `--systemd-cgroup` systemd's `SLICE:PREFIX:NAME`, placed where systemd would put the
scope (`a-b.slice` -> `a.slice/a-b.slice`, unit `PREFIX-NAME.scope`); the directories are made
directly (no D-Bus unit), so this works whether or not systemd runs the host.
"""
from __future__ import annotations

import errno
import os
import time

from ukvm.oci.state import OciError

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "freezer", "devices", "net_cls",
                  "net_prio", "perf_event", "hugetlb", "name=systemd")
V2_CONTROLLERS = ("cpu", "memory", "pids", "cpuset")
DEFAULT_PERIOD = 100_000


def mounts(mountinfo: str = "/proc/self/mountinfo") -> tuple[dict[str, str], str | None]:
    """({v1 controller: its hierarchy's mount point}, the cgroup2 mount point or None)."""
    v1: dict[str, str] = {}
    v2 = None
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, opts, point = fields[sep + 1], fields[sep + 3].split(","), fields[4]
            if fstype == "cgroup":
                for c in opts:
                    if c in V1_CONTROLLERS:
                        v1.setdefault(c, point)
            elif fstype == "cgroup2" and v2 is None:
                v2 = point
    return v1, v2


def own_cgroups(path: str = "/proc/self/cgroup") -> dict[str, str]:
    """{controller (or "" for v2): this process's cgroup path}."""
    out = {}
    with open(path) as f:
        for line in f:
            _, controllers, where = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = where
    return out


def _expand_slice(name: str) -> str:
    """systemd's slice nesting: `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice`."""
    if name in ("", "-.slice"):
        return ""
    if not name.endswith(".slice") or "/" in name:
        raise OciError(f"cgroupsPath: invalid slice name {name!r}")
    base = name[:-len(".slice")]
    parts = base.split("-")
    if any(not p for p in parts):
        raise OciError(f"cgroupsPath: invalid slice name {name!r}")
    return "/".join("-".join(parts[:i]) + ".slice" for i in range(1, len(parts) + 1))


def relative_path(cgroups_path: str, cid: str, systemd: bool) -> tuple[str, bool]:
    """(the cgroup's path, whether it is below the runtime's own cgroup rather than the root)."""
    if systemd:
        parts = (cgroups_path or f"system.slice:ukvm-oci:{cid}").split(":")
        if len(parts) != 3:
            raise OciError(f"cgroupsPath {cgroups_path!r}: expected slice:prefix:name with --systemd-cgroup")
        slice_, prefix, name = parts
        unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
        path = "/".join(p for p in (_expand_slice(slice_ or "system.slice"), unit) if p)
        return "/" + path, False
    if not cgroups_path:
        return "/" + cid, False
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        raise OciError(f"cgroupsPath {cgroups_path!r}: slice:prefix:name needs --systemd-cgroup")
    return cgroups_path, not cgroups_path.startswith("/")


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise OciError(f"cgroup: {value!r} to {path}: {e.strerror}") from None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class Cgroup:
    """The container's cgroup directories, one per hierarchy."""

    def __init__(self, cgroups_path: str, cid: str, systemd: bool):
        rel, below_own = relative_path(cgroups_path, cid, systemd)
        if ".." in rel.split("/"):
            raise OciError(f"cgroupsPath {cgroups_path!r}: must not contain ..")
        v1, v2 = mounts()
        own = own_cgroups() if below_own else {}
        self.version = 1 if v1 else 2
        self.dirs: dict[str, str] = {}      # controller (v2: "") -> directory
        if v1:
            for controller, point in v1.items():
                base = own.get(controller, "/") if below_own else "/"
                self.dirs[controller] = os.path.normpath(os.path.join(point, base.lstrip("/"), rel.lstrip("/")))
            self.roots = dict(v1)
        elif v2:
            base = own.get("", "/") if below_own else "/"
            self.dirs[""] = os.path.normpath(os.path.join(v2, base.lstrip("/"), rel.lstrip("/")))
            self.roots = {"": v2}
        else:
            raise OciError("no cgroup filesystem is mounted")
        self.made: list[str] = []           # directories created here, parents first

    def create(self, resources: dict) -> None:
        """Make the directories and write the limits of linux.resources."""
        for controller, d in self.dirs.items():
            self._mkdirs(controller, d)
        if self.version == 2:
            self._enable_v2_controllers()
        self.limit(resources)

    @classmethod
    def existing(cls, version: int, dirs: dict[str, str]) -> Cgroup:
        """A container's cgroup made earlier (its directories from the container's state)."""
        group = cls.__new__(cls)
        group.version, group.dirs, group.roots, group.made = version, dict(dirs), {}, []
        return group

    def limit(self, resources: dict) -> None:
        """Write linux.resources' limits (create, and runc's `update`)."""
        self._limits(resources or {})

    def _mkdirs(self, controller: str, d: str) -> None:
        root = self.roots[controller]
        chain, p = [], d
        while p != root and len(p) > len(root):
            chain.append(p)
            p = os.path.dirname(p)
        for p in reversed(chain):
            if not os.path.isdir(p):
                try:
                    os.mkdir(p, 0o755)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise OciError(f"cgroup: {p}: {e.strerror}") from None
                self.made.append(p)
                if controller == "cpuset":      # a new v1 cpuset has no CPUs until given its parent's
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        _write(os.path.join(p, name), _read(os.path.join(os.path.dirname(p), name)))

    def _enable_v2_controllers(self) -> None:
        root, d = self.roots[""], self.dirs[""]
        available = set(_read(os.path.join(root, "cgroup.controllers")).split())
        wanted = [c for c in V2_CONTROLLERS if c in available]
        rel = os.path.relpath(os.path.dirname(d), root)
        parts = [] if rel == "." else rel.split("/")
        p = root
        for i in range(len(parts) + 1):
            enabled = set(_read(os.path.join(p, "cgroup.subtree_control")).split())
            for c in (c for c in wanted if c not in enabled):
                try:         # one at a time: a limit that needs a controller not enabled says so later
                    with open(os.path.join(p, "cgroup.subtree_control"), "a") as f:
                        f.write("+" + c)
                except OSError:
                    pass
            if i < len(parts):
                p = os.path.join(p, parts[i])

    def file(self, controller: str, name: str) -> str:
        return os.path.join(self.dirs["" if self.version == 2 else controller], name)

    def _limits(self, res: dict) -> None:
        cpu, mem, pids = res.get("cpu") or {}, res.get("memory") or {}, res.get("pids") or {}
        quota, period, shares = cpu.get("quota"), cpu.get("period"), cpu.get("shares")
        limit, pid_limit = mem.get("limit"), pids.get("limit")
        v2 = self.version == 2
        if isinstance(quota, int) and quota > 0 or isinstance(period, int) and period > 0:
            period = period if isinstance(period, int) and period > 0 else DEFAULT_PERIOD
            if v2:
                q = str(quota) if isinstance(quota, int) and quota > 0 else "max"
                _write(self.file("cpu", "cpu.max"), f"{q} {period}")
            else:
                _write(self.file("cpu", "cpu.cfs_period_us"), str(period))
                if isinstance(quota, int) and quota > 0:
                    _write(self.file("cpu", "cpu.cfs_quota_us"), str(quota))
        if isinstance(shares, int) and shares > 0:
            if v2:      # runc's mapping of shares [2, 262144] onto weight [1, 10000]
                _write(self.file("cpu", "cpu.weight"), str(1 + ((min(max(shares, 2), 262144) - 2) * 9999) // 262142))
            else:
                _write(self.file("cpu", "cpu.shares"), str(shares))
        if isinstance(limit, int) and limit > 0:
            _write(self.file("memory", "memory.max" if v2 else "memory.limit_in_bytes"), str(limit))
        if isinstance(pid_limit, int) and pid_limit != 0:
            _write(self.file("pids", "pids.max"), str(pid_limit) if pid_limit > 0 else "max")
        cpus, mems = cpu.get("cpus"), cpu.get("mems")
        if cpus:
            _write(self.file("cpuset", "cpuset.cpus"), cpus)
        if mems:
            _write(self.file("cpuset", "cpuset.mems"), mems)

    def join(self) -> None:
        """Move the calling process (pid 0: itself, whatever its PID namespace) in."""
        for d in sorted(set(self.dirs.values())):
            _write(os.path.join(d, "cgroup.procs"), "0")

    def pids(self) -> list[int]:
        with open(self.file("pids", "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]


def remove(dirs: list[str], timeout: float = 2.0) -> None:
    """rmdir the directories create() made, deepest first. The container's own may be busy for a
    moment while its last task exits (bounded retries); a parent still holding other containers'
    cgroups stays."""
    deadline = time.monotonic() + timeout
    for d in sorted(dirs, key=len, reverse=True):
        while True:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno == errno.EBUSY and not _has_children(d) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            break


def _has_children(d: str) -> bool:
    try:
        return any(entry.is_dir() for entry in os.scandir(d))
    except OSError:
        return False
