"""oci/runtime.py: `ukvm-oci`, a runc-compatible OCI runtime whose containers are unikernels.

containerd's stock shim (io.containerd.runc.v2 with `BinaryName`), `ctr --runc-binary` and a
Kubernetes RuntimeClass drive it exactly as they drive runc: `create`, `start`, `state`, `kill`,
`delete`, `ps`, `features`, with runc's global flags. A container whose image is a unikernel
(urunc's format, oci/unikernel.py) becomes one process: ukvm's tender running the unikernel, in
the container's cgroup and PID namespace (oci/create.py). Anything else (the pod's pause
container, an ordinary image) is handed to runc unchanged, decided by what the container is,
never by annotations alone (docs/kubernetes.md).

Every command starts lean: this module imports os, sys and the light state module only;
a command for a container runc runs is exec'ed to runc as soon as the state directory (or, for
`create`, the bundle) says so, and `state`/`kill`/`delete`/`ps`/`start` never import the tender.
Signals go to the container's one process; `kill --all` signals only it (it has no children).
"""
from __future__ import annotations

import os
import sys
import time

from ukvm.errors import UkvmError
from ukvm.oci.state import (DEFAULT_ROOT, OCI_VERSION, Container, Log, OciError, alive, check_spec, freezer_file,
                            check_resources, frozen, is_sandbox, json_text, parse_json)

RUNC_PATHS = ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc")
EXEC_REFUSAL = ("exec: a unikernel container has no processes or shell to run a command in; use httpGet or "
                "tcpSocket probes and the guest's console log (kubectl logs)")


def _runc(argv: list[str]) -> int:
    """Not a unikernel: runc, unchanged."""
    runc = os.environ.get("UKVM_OCI_RUNC") or next((p for p in RUNC_PATHS if os.access(p, os.X_OK)), None)
    if runc is None:
        raise OciError("this container is not a unikernel, and runc is not installed to run it")
    os.execv(runc, [runc, *argv])


# --- commands that never import the tender ---------------------------------------------------------
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
            if time.monotonic() > deadline or not alive(state["pid"], state["start_time"]):
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
    print(json_text(out, indent=2))
    return 0


# Linux's signal numbers (x86_64 and the other common ABIs), so that `kill` needs no `signal`
# module (which imports enum); checked against the signal module in the unit tests.
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
           "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
           "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
           "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31}


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
    if not alive(state["pid"], state["start_time"]):
        raise OciError("container not running")
    os.kill(state["pid"], sig)
    if sig == 9:
        _thaw(state)             # a frozen task dies only once thawed
    return 0


def _thaw(state: dict) -> None:
    f = freezer_file(state)
    if f is not None and frozen(state):
        try:
            with open(f[0], "w") as fd:
                fd.write(f[2])
        except OSError:
            pass


def cmd_delete(c: Container, force: bool) -> int:
    state = c.load()
    status = c.status(state)
    if status == "running" and not force:
        raise OciError(f"cannot delete container {c.id} that is not stopped: {status}")
    if status != "stopped":
        os.kill(state["pid"], 9)
        _thaw(state)
        deadline = time.monotonic() + 10
        while alive(state["pid"], state["start_time"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    if state.get("cgroups"):
        from ukvm.oci.cgroups import remove
        remove(state["cgroups"])
    c.remove()
    return 0


def cmd_ps(c: Container, fmt: str) -> int:
    state = c.load()
    pids = [state["pid"]] if alive(state["pid"], state["start_time"]) else []
    if fmt == "json":
        print(json_text(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def cmd_update(c: Container, opts: dict[str, str], stdin) -> int:
    """runc's `update`: new cgroup limits (`--resources FILE|-`, linux.resources' JSON, as the shim
    passes CRI's UpdateContainerResources; or runc's flags). The guest's memory was fixed at boot,
    so a memory limit below what it and the tender were given is refused."""
    state = c.load()
    if not state.get("cgroup"):
        raise OciError(f"update: container {c.id} has no cgroup")
    resources: dict = {}
    if "resources" in opts or "r" in opts:
        source = opts.get("resources", opts.get("r"))
        text = stdin.read() if source == "-" else open(source).read()
        try:
            resources = check_resources(parse_json(text) if text.strip() else {}, "update: --resources")
        except ValueError as e:            # not JSON
            raise OciError(f"update: --resources: {e}") from None
    flags = {"memory": ("memory", "limit"), "cpu-quota": ("cpu", "quota"), "cpu-period": ("cpu", "period"),
             "cpu-share": ("cpu", "shares"), "pids-limit": ("pids", "limit")}
    for flag, (group, key) in flags.items():
        if flag in opts:
            try:
                resources.setdefault(group, {})[key] = int(opts[flag])
            except ValueError:
                raise OciError(f"update: --{flag}: expected a number, got {opts[flag]!r}") from None
    limit = (resources.get("memory") or {}).get("limit")
    from ukvm.oci.unikernel import TENDER_MIB
    if isinstance(limit, int) and 0 < limit < (state.get("mem_mib", 0) + TENDER_MIB) << 20:
        raise OciError(f"update: memory limit {limit} bytes is below the guest's {state['mem_mib']} MiB (fixed at "
                       f"boot) and the tender's {TENDER_MIB} MiB")
    from ukvm.oci.cgroups import Cgroup
    Cgroup.existing(state["cgroup"]["version"], state["cgroup"]["dirs"]).limit(resources)
    return 0


def cmd_freeze(c: Container, freeze: bool) -> int:
    """runc's `pause`/`resume`: the container's cgroup frozen or thawed (the tender's vCPU and all)."""
    state = c.load()
    status = c.status(state)
    if status != ("running" if freeze else "paused"):
        raise OciError(f"cannot {'pause' if freeze else 'resume'} a container that is {status}")
    f = freezer_file(state)
    if f is None:
        raise OciError(f"container {c.id} has no freezer cgroup")
    with open(f[0], "w") as fd:
        fd.write(f[1] if freeze else f[2])
    deadline = time.monotonic() + 10
    while frozen(state) != freeze:       # FREEZING until every task stopped: bounded wait
        if time.monotonic() > deadline:
            raise OciError(f"{f[0]}: the cgroup did not {'freeze' if freeze else 'thaw'}")
        time.sleep(0.005)
    return 0


def cmd_features() -> int:
    print(json_text({"ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION, "hooks": [],
                      "mountOptions": [], "linux": {"namespaces": ["network", "pid"], "capabilities": [],
                                                    "cgroup": {"v1": True, "v2": True, "systemd": True},
                                                    "seccomp": {"enabled": False}, "apparmor": {"enabled": False},
                                                    "selinux": {"enabled": False}},
                      "annotations": {"io.github.ukvm.runtime": "ukvm-oci"}}, indent=2))
    return 0


def cmd_create(root: str, cid: str, bundle: str, pid_file: str | None, console_socket: str | None,
               systemd_cgroup: bool, log: Log, argv: list[str]) -> int:
    """The bundle decides: a CRI sandbox goes to runc before the rootfs is looked at; otherwise
    the image is read (as hostile input) and a unikernel is created here, anything else by runc."""
    bundle = os.path.abspath(bundle)
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = parse_json(f.read())
    except (OSError, ValueError) as e:
        raise OciError(f"{bundle}/config.json: {e}") from None
    check_spec(spec)
    if is_sandbox(spec):
        return _runc(argv)
    rootfs = (spec.get("root") or {}).get("path", "rootfs")
    rootfs = rootfs if os.path.isabs(rootfs) else os.path.join(bundle, rootfs)
    from ukvm.oci.create import create, open_rootfs
    from ukvm.oci.unikernel import unikernel_config
    root_fd = open_rootfs(rootfs)
    keys = unikernel_config(spec, root_fd)
    if keys is None:
        return _runc(argv)
    c = Container(root, cid)
    if c.exists():
        raise OciError(f"container with id exists: {cid}")
    return create(c, spec, bundle, rootfs, root_fd, keys, pid_file, console_socket, systemd_cgroup)


# --- the command line --------------------------------------------------------------------------
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
GLOBAL_FLAGS = {"--debug", "--systemd-cgroup"}
CMD_WITH_VALUE = {"--bundle", "-b", "--pid-file", "--console-socket", "--format", "-f", "--preserve-fds",
                  "--process", "-p", "--signal", "--cwd", "--env", "-e", "--user", "-u", "--resources", "-r",
                  "--memory", "-m", "--cpu-quota", "--cpu-period", "--cpu-share", "--pids-limit"}
OWN_COMMANDS = ("start", "state", "kill", "delete", "ps", "update", "pause", "resume")


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
        if "version" in gopts or (i < len(argv) and argv[i] == "--version"):
            print(f"ukvm-oci version 0.1.0\nspec: {OCI_VERSION}")
            return 0
        if i >= len(argv):
            print("usage: ukvm-oci [global options] create|start|state|kill|delete|ps|features ...", file=sys.stderr)
            return 1
        command, rest = argv[i], argv[i + 1:]
        root = gopts.get("root", DEFAULT_ROOT)
        opts, pos = _split(rest, CMD_WITH_VALUE)
        if command == "features":
            return cmd_features()
        if command == "create":
            if not pos:
                raise OciError("create: missing container id")
            return cmd_create(root, pos[0], opts.get("bundle", opts.get("b", ".")), opts.get("pid-file"),
                              opts.get("console-socket"), "systemd-cgroup" in gopts, log, argv)
        if command == "run":
            raise OciError("run: use create and start")
        if not pos or not Container(root, pos[0]).exists():
            return _runc(argv)           # a container runc created (the pod's sandbox, ...)
        c = Container(root, pos[0])
        if command == "exec":
            raise OciError(EXEC_REFUSAL)
        if command not in OWN_COMMANDS:
            raise OciError(f"command {command!r} is not supported for unikernel containers")
        if command == "start":
            return cmd_start(c)
        if command == "state":
            return cmd_state(c)
        if command == "kill":
            return cmd_kill(c, parse_signal(pos[1] if len(pos) > 1 else "SIGTERM"))
        if command == "delete":
            return cmd_delete(c, "force" in opts or "f" in opts)
        if command == "update":
            return cmd_update(c, opts, sys.stdin)
        if command in ("pause", "resume"):
            return cmd_freeze(c, command == "pause")
        return cmd_ps(c, opts.get("format", opts.get("f", "table")))
    except (UkvmError, OSError) as e:
        log.error(str(e) if isinstance(e, UkvmError) else f"{e.filename or ''}: {e.strerror}".lstrip(": "))
        return 1
