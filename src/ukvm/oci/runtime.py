"""oci/runtime.py: `ukvm-oci`, a runc-compatible OCI runtime whose containers are unikernels.

containerd's stock shim (io.containerd.runc.v2 with `BinaryName`), `ctr --runc-binary` and a
Kubernetes RuntimeClass drive it exactly as they drive runc: `create`, `start`, `state`, `kill`,
`delete`, `ps`, `features`, with runc's global flags. A container whose image is a unikernel
(urunc's format: com.urunc.unikernel.* annotations in config.json, or /urunc.json in the rootfs,
with hypervisor hvt) becomes one process: ukvm's tender running the unikernel. Anything else (the
pod's pause container, an ordinary image) is handed to runc unchanged, decided by what the
container is, never by annotations alone (docs/kubernetes.md).

Theory of operation. `create` forks the container's process, which sets up the network inside
the container's network namespace (a TAP bridged to the pod's interface with tc mirred, so the
unikernel owns the pod's IP), reports success or the exact error to `create` through a pipe, and
then blocks on a FIFO. `create` writes the pid file and exits; the process is reparented to the
shim (a subreaper), which reaps it like runc's init. `start` opens the FIFO: the process execs the
tender. Signals go to that one process; `kill --all` signals only it (it has no children).
State lives in ROOT/ukvm-oci/ID/state.json (runc keeps ROOT/ID for the containers it runs).
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

from ukvm.errors import UkvmError

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/ukvm-oci"
ANNOTATION = "com.urunc.unikernel."
UKVM_BLOCKS = "com.ukvm.blocks"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
MIB = 1 << 20
DEFAULT_MEM_MIB = 512
MIN_MEM_MIB = 2
TAP_NAME = "ukvmtap0"
CLONE_NEWNET = 0x40000000


class OciError(UkvmError):
    pass


# --- logging the way the shim reads it ----------------------------------------------------------
class Log:
    """runc's --log/--log-format: the shim reads the last error line of the log file."""

    def __init__(self, path: str | None, fmt: str):
        self.path, self.fmt = path, fmt

    def error(self, message: str) -> None:
        print(f"ukvm-oci: {message}", file=sys.stderr, flush=True)
        if not self.path:
            return
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        line = json.dumps({"level": "error", "msg": message, "time": now}) if self.fmt == "json" else \
            f'time="{now}" level=error msg="{message}"'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


# --- the image -----------------------------------------------------------------------------------
def unikernel_config(spec: dict, rootfs: str) -> dict[str, str] | None:
    """urunc's keys for this container (annotations first, then /urunc.json), or None when the
    container is not a unikernel to run here: a CRI sandbox (the pod's pause container, which may
    carry the pod's unikernel annotations), or no hvt unikernel binary in its rootfs."""
    annotations = spec.get("annotations") or {}
    if annotations.get(CRI_CONTAINER_TYPE) == "sandbox":
        return None
    keys = {k: v for k, v in annotations.items() if k.startswith(ANNOTATION) or k == UKVM_BLOCKS}
    try:
        with open(os.path.join(rootfs, "urunc.json")) as f:
            from_file = json.load(f)
        for k, v in from_file.items():
            keys.setdefault(k, base64.b64decode(v).decode())
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    binary = keys.get(ANNOTATION + "binary")
    if not binary or keys.get(ANNOTATION + "hypervisor", "hvt") != "hvt":
        return None
    if not os.path.isfile(inside(rootfs, binary)):
        return None
    return keys


def inside(rootfs: str, path: str) -> str:
    """`path` of the image resolved inside `rootfs`: symlinks and `..` cannot leave it."""
    root = os.path.realpath(rootfs)
    resolved = os.path.realpath(os.path.join(root, path.lstrip("/")))
    if resolved != root and not resolved.startswith(root + os.sep):
        raise OciError(f"{path}: leaves the container's rootfs")
    return resolved


def memory_mib(spec: dict) -> int:
    """The container's memory limit as the guest's memory (the tender's own few MiB ride on the
    host, as with any VMM); no limit: hvt's default."""
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    if not isinstance(limit, int) or limit <= 0:
        return DEFAULT_MEM_MIB
    return max(MIN_MEM_MIB, limit // MIB)


def tender_argv(keys: dict[str, str], rootfs: str, spec: dict, net: dict | None) -> list[str]:
    from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC
    from ukvm.machine.vm import Kernel
    binary = inside(rootfs, keys[ANNOTATION + "binary"])
    kernel = Kernel(binary)
    try:
        devices = kernel.manifest().devices()
    finally:
        kernel.close()
    argv = [sys.executable, "-m", "ukvm", "run", f"--mem={memory_mib(spec)}"]
    blocks = [e.name for e in devices if e.type == MFT_DEV_BLOCK_BASIC]
    given = dict(item.split("=", 1) for item in keys.get(UKVM_BLOCKS, "").split(",") if "=" in item)
    if not given and keys.get(ANNOTATION + "block") and len(blocks) == 1:
        given = {blocks[0]: keys[ANNOTATION + "block"]}
    for name, path in given.items():
        argv.append(f"--block:{name}={inside(rootfs, path)}")
    nics = [e.name for e in devices if e.type == MFT_DEV_NET_BASIC]
    cmdline = keys.get(ANNOTATION + "cmdline", "")
    if nics and net is not None:
        argv += [f"--net:{nics[0]}={net['tap']}", f"--net-mac:{nics[0]}={net['mac']}"]
        if net.get("ip"):       # the pod's address, passed as urunc passes it to Solo5 guests
            cmdline = f"--ipv4={net['ip']} --ipv4-gateway={net['gateway']} {cmdline}".strip()
    return argv + ["--", binary] + (cmdline.split() if cmdline else [])


# --- networking inside the container's namespace -------------------------------------------------
def _ip(*args: str) -> str:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise OciError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _tc(*args: str) -> None:
    p = subprocess.run(["tc", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise OciError(f"tc {' '.join(args)}: {p.stderr.strip()}")


def setup_network() -> dict:
    """In the current network namespace: a TAP for the guest, bridged to the pod's interface
    with tc mirred both ways, the interface's address moved to the guest. Without an addressed
    interface (a container with no network) the TAP stays unconnected."""
    links = json.loads(_ip("-j", "addr", "show"))
    pod = next((link for link in links if link.get("ifname") != "lo"
                and any(a.get("family") == "inet" for a in link.get("addr_info", []))), None)
    _ip("tuntap", "add", TAP_NAME, "mode", "tap")
    _ip("link", "set", TAP_NAME, "up")
    if pod is None:
        return {"tap": TAP_NAME, "mac": "02:00:00:00:00:01"}
    addr = next(a for a in pod["addr_info"] if a.get("family") == "inet")
    routes = json.loads(_ip("-j", "route", "show", "default"))
    gateway = routes[0]["gateway"] if routes and routes[0].get("gateway") else addr["local"]
    dev = pod["ifname"]
    _ip("addr", "del", f"{addr['local']}/{addr['prefixlen']}", "dev", dev)
    for a, b in ((dev, TAP_NAME), (TAP_NAME, dev)):
        _tc("qdisc", "add", "dev", a, "ingress")
        _tc("filter", "add", "dev", a, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
            "action", "mirred", "egress", "redirect", "dev", b)
    return {"tap": TAP_NAME, "mac": pod["address"], "ip": f"{addr['local']}/{addr['prefixlen']}",
            "gateway": gateway}


def _enter_netns(spec: dict) -> None:
    """Join the container's network namespace (CRI gives a path), or make a new one (runc's
    behaviour for a `network` entry without a path)."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") != "network":
            continue
        if ns.get("path"):
            fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                _libc_call("setns", fd, CLONE_NEWNET)
            finally:
                os.close(fd)
        else:
            _libc_call("unshare", CLONE_NEWNET)
            subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True)
        return


def _libc_call(name: str, *args: int) -> None:
    """setns/unshare (os.setns and os.unshare arrive with Python 3.12)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


# --- state -----------------------------------------------------------------------------------------
class Container:
    def __init__(self, root: str, cid: str):
        if not cid or "/" in cid or cid in (".", ".."):
            raise OciError(f"invalid container id {cid!r}")
        self.id = cid
        self.dir = os.path.join(root, "ukvm-oci", cid)
        self.fifo = os.path.join(self.dir, "exec.fifo")

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.dir, "state.json"))

    def load(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            raise OciError(f"container {self.id} does not exist") from None

    def save(self, state: dict) -> None:
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    def status(self, state: dict) -> str:
        if not _alive(state["pid"], state["start_time"]):
            return "stopped"
        return "created" if os.path.exists(self.fifo) else "running"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: a pid reused by another process is not ours."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start_time: int) -> bool:
    return pid > 0 and _start_time(pid) == start_time


# --- commands ----------------------------------------------------------------------------------
def cmd_create(root: str, cid: str, bundle: str, pid_file: str | None, console_socket: str | None,
               argv: list[str]) -> int:
    bundle = os.path.abspath(bundle)
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise OciError(f"{bundle}/config.json: {e}") from None
    rootfs = (spec.get("root") or {}).get("path", "rootfs")
    rootfs = rootfs if os.path.isabs(rootfs) else os.path.join(bundle, rootfs)
    keys = unikernel_config(spec, rootfs)
    if keys is None:
        return _runc(argv)
    c = Container(root, cid)
    if c.exists():
        raise OciError(f"container with id exists: {cid}")
    os.makedirs(c.dir, mode=0o700)
    os.mkfifo(c.fifo, 0o600)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the container's process
        os.close(ready_r)
        _container_process(c, spec, rootfs, keys, console_socket, ready_w)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        report = ready.read()
    if report != b"ok":
        os.waitpid(pid, 0)
        _remove(c)
        raise OciError(report.decode(errors="replace") or "the container's process died during create")
    c.save({"id": cid, "pid": pid, "start_time": _start_time(pid), "bundle": bundle, "rootfs": rootfs,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
            "annotations": spec.get("annotations") or {}})
    if pid_file:
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, pid_file)
    return 0


def _container_process(c: Container, spec: dict, rootfs: str, keys: dict, console_socket: str | None,
                       ready_w: int) -> None:
    """Set up, report to create, wait for start, exec the tender. Never returns."""
    try:
        os.setsid()
        _enter_netns(spec)
        net = setup_network() if _wants_network(rootfs, keys) else None
        argv = tender_argv(keys, rootfs, spec, net)
        if console_socket:
            _send_console(console_socket)
        os.write(ready_w, b"ok")
        os.close(ready_w)
        fd = os.open(c.fifo, os.O_WRONLY | os.O_CLOEXEC)     # blocks until `start` opens it
        os.write(fd, b"0")
        os.close(fd)
        os.execv(argv[0], argv)
    except BaseException as e:     # noqa: BLE001  (everything goes back to create as text)
        try:
            os.write(ready_w, str(e).encode() or type(e).__name__.encode())
        except OSError:
            pass
        os._exit(1)


def _wants_network(rootfs: str, keys: dict) -> bool:
    from ukvm.machine.manifest import MFT_DEV_NET_BASIC
    from ukvm.machine.vm import Kernel
    kernel = Kernel(inside(rootfs, keys[ANNOTATION + "binary"]))
    try:
        return any(e.type == MFT_DEV_NET_BASIC for e in kernel.manifest().devices())
    finally:
        kernel.close()


def _send_console(path: str) -> None:
    """-t: a pseudo-terminal; its master goes to the shim over the console socket, the slave
    becomes the process's stdio and controlling terminal."""
    import array
    import fcntl
    import termios
    master, slave = os.openpty()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
    os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def cmd_start(c: Container) -> int:
    state = c.load()
    status = c.status(state)
    if status != "created":
        raise OciError(f"cannot start a container that is {status}")
    fd = os.open(c.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + 10
        while True:          # the process may still be on its way to the FIFO: bounded wait
            try:
                if os.read(fd, 1):
                    break
            except BlockingIOError:
                pass
            if time.monotonic() > deadline or not _alive(state["pid"], state["start_time"]):
                raise OciError("the container's process did not start")
            time.sleep(0.001)
    finally:
        os.close(fd)
    os.unlink(c.fifo)
    return 0


def cmd_state(c: Container) -> int:
    state = c.load()
    status = c.status(state)
    out = {"ociVersion": OCI_VERSION, "id": state["id"], "pid": state["pid"] if status != "stopped" else 0,
           "status": status, "bundle": state["bundle"], "rootfs": state["rootfs"], "created": state["created"],
           "owner": "", "annotations": state["annotations"]}
    print(json.dumps(out, indent=2))
    return 0


SIGNALS = {name[3:]: getattr(signal, name) for name in dir(signal)
           if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(getattr(signal, name), int)}


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise OciError(f"unknown signal {text!r}")
    return SIGNALS[name]


def cmd_kill(c: Container, sig: int) -> int:
    """One process to signal, with or without --all: the tender has no children."""
    state = c.load()
    if not _alive(state["pid"], state["start_time"]):
        raise OciError("container not running")
    os.kill(state["pid"], sig)
    return 0


def cmd_delete(c: Container, force: bool) -> int:
    state = c.load()
    status = c.status(state)
    if status == "running" and not force:
        raise OciError(f"cannot delete container {c.id} that is not stopped: {status}")
    if status != "stopped":
        os.kill(state["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(state["pid"], state["start_time"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    _remove(c)
    return 0


def _remove(c: Container) -> None:
    for name in ("exec.fifo", "state.json"):
        try:
            os.unlink(os.path.join(c.dir, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(c.dir)
    except OSError:
        pass


def cmd_ps(c: Container, fmt: str) -> int:
    state = c.load()
    pids = [state["pid"]] if _alive(state["pid"], state["start_time"]) else []
    if fmt == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def cmd_features() -> int:
    print(json.dumps({"ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION, "hooks": [],
                      "mountOptions": [], "linux": {"namespaces": ["network"], "capabilities": [],
                                                    "cgroup": {"v1": False, "v2": False},
                                                    "seccomp": {"enabled": False}, "apparmor": {"enabled": False},
                                                    "selinux": {"enabled": False}},
                      "annotations": {"io.github.ukvm.runtime": "ukvm-oci"}}, indent=2))
    return 0


def _runc(argv: list[str]) -> int:
    """Not a unikernel: runc, unchanged."""
    runc = os.environ.get("UKVM_OCI_RUNC") or next(
        (p for p in ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc")
         if os.access(p, os.X_OK)), None)
    if runc is None:
        raise OciError("this container is not a unikernel, and runc is not installed to run it")
    os.execv(runc, [runc, *argv])


# --- the command line --------------------------------------------------------------------------
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
GLOBAL_FLAGS = {"--debug", "--systemd-cgroup"}
CMD_WITH_VALUE = {"--bundle", "-b", "--pid-file", "--console-socket", "--format", "-f", "--preserve-fds",
                  "--process", "-p", "--signal", "--cwd", "--env", "-e", "--user", "-u"}


def _split(args: list[str], with_value: set[str]) -> tuple[dict[str, str], list[str]]:
    opts, rest = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if a.startswith("-") and name in with_value:
            if not eq:
                i += 1
                if i >= len(args):
                    raise OciError(f"flag needs an argument: {name}")
                value = args[i]
            opts[name.lstrip("-")] = value
        elif a.startswith("-") and len(a) > 1:
            opts[name.lstrip("-")] = value if eq else "true"
        else:
            rest.append(a)
        i += 1
    return opts, rest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log = Log(None, "text")
    try:
        i = 0
        while i < len(argv) and argv[i].startswith("-"):
            i += 1 if "=" in argv[i] or argv[i] in GLOBAL_FLAGS or argv[i] not in GLOBAL_WITH_VALUE else 2
        gopts, _ = _split(argv[:i], GLOBAL_WITH_VALUE)
        log = Log(gopts.get("log"), gopts.get("log-format", "text"))
        if i >= len(argv):
            print("usage: ukvm-oci [global options] create|start|state|kill|delete|ps|features ...", file=sys.stderr)
            return 1
        if "version" in gopts or argv[i] == "--version":
            print(f"ukvm-oci version 0.1.0\nspec: {OCI_VERSION}")
            return 0
        command, rest = argv[i], argv[i + 1:]
        root = gopts.get("root", DEFAULT_ROOT)
        opts, pos = _split(rest, CMD_WITH_VALUE)
        if command == "features":
            return cmd_features()
        if command not in ("create", "run", "start", "state", "kill", "delete", "ps"):
            if pos and not Container(root, pos[0]).exists():
                return _runc(argv)
            raise OciError(f"command {command!r} is not supported for unikernel containers")
        if not pos:
            raise OciError(f"{command}: missing container id")
        if command == "run":
            raise OciError("run: use create and start")
        if command == "create":
            return cmd_create(root, pos[0], opts.get("bundle", opts.get("b", ".")), opts.get("pid-file"),
                              opts.get("console-socket"), argv)
        c = Container(root, pos[0])
        if not c.exists():
            return _runc(argv)           # a container runc created (the pod's sandbox, ...)
        if command == "start":
            return cmd_start(c)
        if command == "state":
            return cmd_state(c)
        if command == "kill":
            return cmd_kill(c, parse_signal(pos[1] if len(pos) > 1 else "SIGTERM"))
        if command == "delete":
            return cmd_delete(c, "force" in opts or "f" in opts)
        return cmd_ps(c, opts.get("format", opts.get("f", "table")))
    except (UkvmError, OSError) as e:
        log.error(str(e) if isinstance(e, UkvmError) else f"{e.filename or ''}: {e.strerror}".lstrip(": "))
        return 1
