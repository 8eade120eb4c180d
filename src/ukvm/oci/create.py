"""oci/create.py: `ukvm-oci create` of a unikernel container, and the container's process.

`create` makes the container's cgroup (with its limits), enters the container's PID namespace
(made or joined, as the spec says) and forks the container's process, which joins the cgroup,
enters the network namespace (refusing the host's), sets up the NIC, reports success or the
exact error back through a pipe and blocks on a FIFO. `create` writes the pid file and exits; the
process is reparented to the shim (a subreaper), which reaps it like runc's init. `start` opens
the FIFO: the process execs the tender, with the image's files as fds ukvm-oci checked.
"""
from __future__ import annotations

import os
import _signal as signal  # the C module behind `signal`, without its enum import
import sys

from ukvm.oci import cgroups, network
from ukvm.oci.safeopen import open_root
from ukvm.oci.serve_pod import UKVM_SERVE, parse, serve_argv
from ukvm.oci.state import Container, OciError, start_time, utc_now
from ukvm.oci.unikernel import Unikernel, guest_mem_mib


def tender_boot() -> list[str]:
    """The interpreter, lean (no site hooks, no environment), with this ukvm importable."""
    import ukvm
    src = os.path.dirname(os.path.dirname(os.path.abspath(ukvm.__file__)))
    code = (f"import sys; sys.argv[0] = 'ukvm'; sys.path.insert(0, {src!r}); "
            "from ukvm.cli import main; sys.exit(main())")
    return [sys.executable, "-I", "-S", "-c", code]


def create(c: Container, spec: dict, bundle: str, rootfs: str, root_fd: int, keys: dict, pid_file: str | None,
           console_socket: str | None, systemd_cgroup: bool) -> int:
    # Every refusal comes here, before anything on the host is made or touched.
    mem = guest_mem_mib(spec)
    unikernel = Unikernel(keys, root_fd)               # the image's files, checked and held by fd
    if UKVM_SERVE in keys:
        parse(keys[UKVM_SERVE])                        # refused here, not in the container's process
        if not unikernel.nics:                         # else serve would listen in the runtime's netns
            raise OciError(f"{UKVM_SERVE}: the unikernel declares no network device to serve with")
        if unikernel.device_count != 1:                # what serve takes (serve/server.py), said here
            raise OciError(f"{UKVM_SERVE}: the unikernel must declare exactly one device, its NIC "
                           f"(it declares {unikernel.device_count})")
    network.check_own_netns(spec)     # with a NIC or without: never the host's network (issue 18)
    linux = spec.get("linux") or {}
    group = cgroups.Cgroup(linux.get("cgroupsPath") or "", c.id, systemd_cgroup)
    os.makedirs(c.dir, mode=0o700)
    try:
        os.mkfifo(c.fifo, 0o600)
        group.create(linux.get("resources") or {})
        _enter_pidns(spec)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the container's process
            os.close(ready_r)
            _container_process(c, spec, unikernel, mem, group, console_socket, ready_w)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            report = ready.read()
        if report != b"ok":
            os.waitpid(pid, 0)
            raise OciError(report.decode(errors="replace") or "the container's process died during create")
    except BaseException:
        cgroups.remove(group.made)
        c.remove()
        raise
    c.save({"id": c.id, "pid": pid, "start_time": start_time(pid), "bundle": bundle, "rootfs": rootfs,
            "created": utc_now(), "annotations": spec.get("annotations") or {}, "cgroups": group.made,
            "cgroup": {"version": group.version, "dirs": group.dirs}, "mem_mib": mem})
    if pid_file:
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, pid_file)
    return 0


def _enter_pidns(spec: dict) -> None:
    """The container's PID namespace for the process forked next: joined (a path) or made (an
    entry without one), as runc does; none in the spec: the runtime's own."""
    ns = network.namespace_entry(spec, "pid")
    if ns is None:
        return
    if ns.get("path"):
        fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            network.libc_call("setns", fd, network.CLONE_NEWPID)
        finally:
            os.close(fd)
    else:
        network.libc_call("unshare", network.CLONE_NEWPID)


def _container_process(c: Container, spec: dict, unikernel: Unikernel, mem: int, group: cgroups.Cgroup,
                       console_socket: str | None, ready_w: int) -> None:
    """Set up, report to create, wait for start, exec the tender. Never returns."""
    try:
        group.join()                  # first: everything from here on is the container's
        # Blocked from here, across the exec: as init of its PID namespace this process would
        # drop a default-action SIGTERM, so a kill right after `start` (before the tender's
        # handlers exist) was lost. Blocked, it waits: `ukvm run` keeps them blocked and takes
        # them at KVM_RUN or POLL (machine/signals.py); `ukvm serve` unblocks them once its
        # handlers are installed.
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        os.setsid()
        net = None
        serve = unikernel.keys.get(UKVM_SERVE)      # `ukvm serve`: keeps the pod's NIC, makes its own TAP
        network.enter_netns(spec, loopback=bool(unikernel.nics))    # the tender lives there, as runc's process would
        if unikernel.nics:
            net = None if serve else network.setup_network()
        if serve:
            argv = serve_argv(serve, unikernel.binary, mem, unikernel.cmdline, tender_boot())
        else:
            argv = unikernel.tender_argv(mem, net, tender_boot())
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


def _send_console(path: str) -> None:
    """-t: a pseudo-terminal; its master goes to the shim over the console socket, the slave
    becomes the process's stdio and controlling terminal."""
    import array
    import fcntl
    import socket
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


def open_rootfs(rootfs: str) -> int:
    try:
        return open_root(rootfs)
    except OSError as e:
        raise OciError(f"rootfs {rootfs}: {e.strerror}") from None
