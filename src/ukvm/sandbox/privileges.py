"""sandbox/privileges.py: what a process gives up besides system calls (docs/security.md).

In two steps, because some things are per thread and the threads start during set-up:
- prepare(), before any thread exists: a mount namespace of our own (every later thread shares
  it), nothing propagated to or from the host's; an empty capability bounding set and no
  inheritable or ambient capabilities (inherited by every thread made later).
- lock_down(), after set-up: an empty, read-only root (pivot_root onto a small tmpfs, the old
  root detached), another user and group with no supplementary groups (glibc applies set*id to
  every thread; leaving uid 0 clears every thread's permitted and effective capabilities), and
  not dumpable (no ptrace, no core, /proc/PID owned by root).
"""
from __future__ import annotations

import ctypes
import os

from ukvm.sandbox.bpf import SandboxError, install

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 4, 24, 47, 4
NR_PIVOT_ROOT, NR_CAPSET = 155, 126
LINUX_CAPABILITY_VERSION_3 = 0x20080522
EMPTY_ROOT = "/tmp"       # where the empty tmpfs is mounted, in our namespace only, before pivot_root


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SandboxError(f"{what} failed: {os.strerror(ctypes.get_errno())}")


def lookup_user(name: str) -> tuple[int, int]:
    """(uid, gid) of `name` (its primary group); one line if there is no such user or it is root."""
    import pwd
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SandboxError(f"--user {name}: no such user") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxError(f"--user {name}: must not be root or in group root")
    return entry.pw_uid, entry.pw_gid


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def prepare() -> None:
    """Before any thread: a private mount namespace; no bounding, inheritable or ambient caps."""
    libc = _libc()
    if len(os.listdir("/proc/self/task")) != 1:
        raise SandboxError("internal error: confinement must be prepared before any thread starts")
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    for cap in range(last_capability() + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} from the bounding set")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    _set_caps(libc, effective_and_permitted=True)


def _set_caps(libc, effective_and_permitted: bool) -> None:
    """capset on this thread: inheritable empty; effective and permitted kept as they are, or empty."""
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if effective_and_permitted:
        _check(libc.syscall(ctypes.c_long(125), header, data), "capget")      # effective, permitted, inheritable x2
    for i in range(2):
        data[3 * i + 2] = 0                                                      # inheritable
        if not effective_and_permitted:
            data[3 * i] = data[3 * i + 1] = 0
    _check(libc.syscall(ctypes.c_long(NR_CAPSET), header, data), "capset")


def empty_root() -> None:
    """pivot_root onto an empty read-only tmpfs and detach the old root: afterwards no path names
    anything of the host's. Affects every thread (they share the namespace and the fs root)."""
    libc = _libc()
    root = EMPTY_ROOT.encode()
    _check(libc.mount(b"ukvm-empty", root, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      b"size=16k,nr_inodes=4,mode=0755"), "mounting the empty root")
    os.mkdir(EMPTY_ROOT + "/old", 0o700)
    _check(libc.syscall(ctypes.c_long(NR_PIVOT_ROOT), root, root + b"/old"), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/old", MNT_DETACH), "detaching the old root")
    os.rmdir("/old")
    _check(libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "making the empty root read-only")


def drop_to(uid: int, gid: int) -> None:
    """Another user and group on every thread, no supplementary groups, no capabilities left."""
    libc = _libc()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _set_caps(libc, effective_and_permitted=False)     # already empty; says so explicitly
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SandboxError("could not change user")
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        pass
    else:
        raise SandboxError("could regain root after dropping it")


def not_dumpable() -> None:
    _check(_libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE, 0)")


def confine(uid: int, gid: int, program) -> None:
    """The last steps of serve's confinement, in their order: an empty root, the drop to uid/gid,
    not dumpable, and the filter last (it forbids what the steps before it use)."""
    empty_root()
    drop_to(uid, gid)
    not_dumpable()
    install(program)
