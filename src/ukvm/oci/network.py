"""oci/network.py: the container's network namespace, and the guest's NIC inside it.

The NIC set-up moves the pod interface's address to the guest and redirects its traffic: done in
any namespace but the container's own, it would take the host's address away. So the container's
namespace is entered first and checked to be a different one from the runtime's own (and from
init's); a container without one of its own (`ctr run --net-host`, a hostNetwork pod) is refused
before anything is touched.
"""
from __future__ import annotations

import os

from ukvm.oci.state import OciError

TAP_NAME = "ukvmtap0"
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
HOST_NETNS_REFUSAL = ("the container has no network namespace of its own (host network): ukvm-oci runs a "
                      "unikernel only in one of its own (a NIC takes over the namespace's interface)")


def libc_call(name: str, *args: int) -> None:
    """setns/unshare (os.setns and os.unshare arrive with Python 3.12)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def namespace_entry(spec: dict, kind: str) -> dict | None:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == kind:
            return ns
    return None


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_own_netns(spec: dict) -> None:
    """OciError unless the spec gives the container a network namespace other than the
    runtime's own and init's (checked again after entering it)."""
    ns = namespace_entry(spec, "network")
    if ns is None:
        raise OciError(HOST_NETNS_REFUSAL)
    if ns.get("path"):
        try:
            target = _ns_id(ns["path"])
        except OSError as e:
            raise OciError(f"network namespace {ns['path']}: {e.strerror}") from None
        if target in _host_namespaces():
            raise OciError(HOST_NETNS_REFUSAL)


def _host_namespaces() -> set[tuple[int, int]]:
    ids = {_ns_id("/proc/self/ns/net")}
    try:
        ids.add(_ns_id("/proc/1/ns/net"))
    except OSError:
        pass
    return ids


def enter_netns(spec: dict, loopback: bool = True) -> None:
    """Join the container's network namespace (CRI gives a path), or make a new one (runc's
    behaviour for a `network` entry without a path, with `lo` up unless `loopback` is false: a
    unikernel without a NIC never uses it); then check that it is not the host's."""
    check_own_netns(spec)
    host = _host_namespaces()
    ns = namespace_entry(spec, "network")
    if ns.get("path"):
        fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc_call("setns", fd, CLONE_NEWNET)
        finally:
            os.close(fd)
    else:
        libc_call("unshare", CLONE_NEWNET)
        if loopback:
            import subprocess
            subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True)
    if _ns_id("/proc/self/ns/net") in host:       # belt and braces: never set up the host's NIC
        raise OciError(HOST_NETNS_REFUSAL)


def _ip(*args: str) -> str:
    import subprocess        # only for a unikernel with a NIC (it costs a create ~10 ms)
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise OciError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _tc(*args: str) -> None:
    import subprocess
    p = subprocess.run(["tc", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise OciError(f"tc {' '.join(args)}: {p.stderr.strip()}")


def setup_network() -> dict:
    """In the container's network namespace: a TAP for the guest, bridged to the pod's interface
    with tc mirred both ways, the interface's address moved to the guest. Without an addressed
    interface (a container with no network) the TAP stays unconnected. The gateway is the
    namespace's default route (what the CNI result installed), none when there is none."""
    import json              # only for a unikernel with a NIC, like subprocess
    links = json.loads(_ip("-j", "addr", "show"))
    pod = next((link for link in links if link.get("ifname") != "lo"
                and any(a.get("family") == "inet" for a in link.get("addr_info", []))), None)
    _ip("tuntap", "add", TAP_NAME, "mode", "tap")
    _ip("link", "set", TAP_NAME, "up")
    if pod is None:
        return {"tap": TAP_NAME, "mac": "02:00:00:00:00:01"}
    addr = next(a for a in pod["addr_info"] if a.get("family") == "inet")
    routes = json.loads(_ip("-j", "-4", "route", "show", "default"))
    gateway = next((r["gateway"] for r in routes if r.get("gateway")), None)
    dev = pod["ifname"]
    _ip("addr", "del", f"{addr['local']}/{addr['prefixlen']}", "dev", dev)
    for a, b in ((dev, TAP_NAME), (TAP_NAME, dev)):
        _tc("qdisc", "add", "dev", a, "ingress")
        _tc("filter", "add", "dev", a, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
            "action", "mirred", "egress", "redirect", "dev", b)
    return {"tap": TAP_NAME, "mac": pod["address"], "ip": f"{addr['local']}/{addr['prefixlen']}",
            "gateway": gateway}
