"""oci/safeopen.py: files of a hostile image, opened inside its rootfs and held by fd.

An image's rootfs is written by whoever built the image: any path in it may be a symlink (to the
host's /etc, to /dev/zero), a `..` chain, a FIFO, a device node containerd created from a layer.
Every path ukvm-oci takes from an image is resolved here, with the rootfs as `/`:

- openat2(2) with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS where the kernel has it (5.6+):
  absolute symlinks and `..` resolve inside the rootfs, /proc magic links are refused;
- elsewhere the same by hand: one component at a time with O_PATH | O_NOFOLLOW, symlinks read
  with readlinkat and resolved against the rootfs, `..` never above it, at most 40 links.

The result is an O_PATH fd (opening it has no side effect: a FIFO does not block, a device's
driver is not called); fstat on it decides, and only a regular file is ever reopened for reading
(through /proc/self/fd, which reopens that very inode, never the path again).
"""
from __future__ import annotations

import errno
import os
import stat

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
SYS_OPENAT2 = 437            # x86_64
MAX_LINKS = 40               # the kernel's own limit on symlinks in one lookup
O_PATH = getattr(os, "O_PATH", 0o10000000)


class ImageFileError(Exception):
    """A path of the image that may not be used; the message names it and says why. `missing`:
    the path does not exist in the image (which may be a decision, not an attack)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


_openat2_state: list = []     # [callable or None] once probed


def _openat2():
    """The openat2 system call as a function (dirfd, path, flags, resolve) -> fd, or None."""
    if not _openat2_state:
        fn = None
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)

            class OpenHow(ctypes.Structure):
                _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

            syscall = libc.syscall
            syscall.restype = ctypes.c_long

            def fn(dirfd: int, path: str, flags: int, resolve: int) -> int:
                how = OpenHow(flags, 0, resolve)
                fd = syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                             ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
                if fd < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), path)
                return fd
            try:                   # probe: ENOSYS on kernels before 5.6 (or under a filter)
                os.close(fn(-100, "/", os.O_RDONLY | O_PATH | os.O_CLOEXEC, 0))
            except OSError as e:
                if e.errno in (errno.ENOSYS, errno.EPERM):
                    fn = None
        except (OSError, AttributeError):
            fn = None
        _openat2_state.append(fn)
    return _openat2_state[0]


def open_root(rootfs: str) -> int:
    """The rootfs directory itself (the bundle's, given by containerd: trusted) as an O_PATH fd."""
    return os.open(rootfs, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def resolve(root_fd: int, path: str, use_openat2: bool | None = None) -> int:
    """`path` of the image, resolved with `root_fd` as `/`: an O_PATH fd of what it names
    (a symlink at the end is followed, inside the rootfs). OSError as the lookup fails."""
    fn = _openat2() if use_openat2 is not False else None
    if fn is not None:
        return fn(root_fd, path.lstrip("/") or ".", O_PATH | os.O_CLOEXEC,
                  RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    if use_openat2:
        raise OSError(errno.ENOSYS, "openat2 is not available")
    return _walk(root_fd, path)


def _walk(root_fd: int, path: str) -> int:
    """resolve() without openat2: a component at a time, never following a link by the kernel."""
    stack = [os.dup(root_fd)]             # fds of the directories from the root down to here
    todo = [p for p in path.split("/") if p]
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:        # `..` of the rootfs is the rootfs
                    os.close(stack.pop())
                continue
            fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    os.close(fd)
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink("", dir_fd=fd)  # an O_PATH fd of the link itself
                os.close(fd)
                if target.startswith("/"):          # absolute: from the rootfs
                    for d in stack[1:]:
                        os.close(d)
                    del stack[1:]
                todo[:0] = [p for p in target.split("/") if p]
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            stack.append(fd)
        return os.dup(stack[-1])
    finally:
        for d in stack:
            os.close(d)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(root_fd: int, path: str, use_openat2: bool | None = None) -> tuple[int, os.stat_result]:
    """An O_PATH fd of the regular file at `path` in the image, and its stat. ImageFileError
    when it cannot be looked up inside the rootfs or is anything but a regular file."""
    try:
        fd = resolve(root_fd, path, use_openat2)
    except OSError as e:
        if e.errno == errno.EXDEV:       # what openat2 says for a /proc magic link on the way
            raise ImageFileError(f"{path}: a magic link in the image") from None
        raise ImageFileError(f"{path}: {os.strerror(e.errno)}", missing=e.errno == errno.ENOENT) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageFileError(f"{path}: {_kind(st.st_mode)}, not a regular file")
    return fd, st


def reopen(fd: int, flags: int) -> int:
    """A readable (or writable) fd of the file an O_PATH fd holds: the same inode, not the path."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def read_capped(root_fd: int, path: str, cap: int, use_openat2: bool | None = None) -> bytes:
    """The whole regular file at `path`, refused when it is larger than `cap` bytes."""
    pfd, st = open_regular(root_fd, path, use_openat2)
    try:
        if st.st_size > cap:
            raise ImageFileError(f"{path}: {st.st_size} bytes, more than the {cap} allowed")
        fd = reopen(pfd, os.O_RDONLY)
    finally:
        os.close(pfd)
    try:
        data = os.read(fd, cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:            # grew since fstat
        raise ImageFileError(f"{path}: more than the {cap} bytes allowed")
    return data
