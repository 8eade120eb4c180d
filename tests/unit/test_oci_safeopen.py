"""oci/safeopen.py: paths of a hostile image resolve inside its rootfs, by openat2 and by the
component walk used where the kernel lacks openat2; only regular files are ever opened."""
import os

import pytest

from ukvm.oci.safeopen import ImageFileError, _openat2, open_regular, open_root, read_capped, reopen

WAYS = [pytest.param(False, id="walk"),
        pytest.param(True, id="openat2", marks=pytest.mark.skipif(_openat2() is None, reason="no openat2"))]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "conf").write_text("inside")
    (r / "dir").mkdir()
    return r


@pytest.fixture
def outside(tmp_path):
    (tmp_path / "secret").write_text("host file")
    return tmp_path


def read(root, path, use_openat2):
    fd = open_root(str(root))
    try:
        return read_capped(fd, path, 1 << 16, use_openat2).decode()
    finally:
        os.close(fd)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_plain_and_dotdot_stay_inside(root, outside, use_openat2):
    assert read(root, "/etc/conf", use_openat2) == "inside"
    assert read(root, "etc/../etc/./conf", use_openat2) == "inside"
    assert read(root, "/../../../etc/conf", use_openat2) == "inside"        # `..` of the root is the root
    with pytest.raises(ImageFileError, match="No such file"):
        read(root, "/../secret", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_absolute_symlinks_resolve_in_the_rootfs(root, outside, use_openat2):
    (root / "abs").symlink_to("/etc/conf")                                  # legitimate in an image
    assert read(root, "/abs", use_openat2) == "inside"
    (root / "dir" / "up").symlink_to("../../../secret")                     # relative, climbing out
    (root / "host").symlink_to(outside / "secret")                          # absolute host path
    for path in ("/dir/up", "/host"):
        with pytest.raises(ImageFileError, match="No such file"):
            read(root, path, use_openat2)
    (root / "secret").write_text("the image's own")                         # found inside, not outside
    assert read(root, "/dir/up", use_openat2) == "the image's own"


@pytest.mark.parametrize("use_openat2", WAYS)
def test_symlink_loops_end(root, use_openat2):
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    with pytest.raises(ImageFileError, match="Too many levels of symbolic links"):
        read(root, "/a", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_magic_links_never_reach_the_host(root, use_openat2):
    """A link to /proc/self/... resolves in the image (no /proc there); with the image's own
    /proc pointing at the real one, openat2 refuses the magic link."""
    (root / "m").symlink_to("/proc/self/root/etc/hostname")
    with pytest.raises(ImageFileError, match="No such file"):
        read(root, "/m", use_openat2)
    (root / "proc").symlink_to("/proc")                                     # the image's /proc: itself
    with pytest.raises(ImageFileError):
        read(root, "/proc/self/root/etc/hostname", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_only_regular_files(root, use_openat2):
    os.mkfifo(root / "fifo")                   # opened O_PATH: no hang
    (root / "zero").symlink_to("/dev/zero")    # the image's /dev/zero does not exist
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o600 | 0o020000, os.makedev(1, 3))   # a device node in a layer
    for path, kind in (("/fifo", "a FIFO"), ("/dir", "a directory"), ("/dev/null", "a character device")):
        with pytest.raises(ImageFileError, match=f"{path}: {kind}, not a regular file"):
            read(root, path, use_openat2)
    with pytest.raises(ImageFileError, match="No such file"):
        read(root, "/zero", use_openat2)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_size_cap(root, use_openat2):
    (root / "big").write_bytes(b"x" * 100)
    fd = open_root(str(root))
    try:
        assert read_capped(fd, "/big", 100, use_openat2) == b"x" * 100
        with pytest.raises(ImageFileError, match="100 bytes, more than the 99 allowed"):
            read_capped(fd, "/big", 99, use_openat2)
    finally:
        os.close(fd)


@pytest.mark.parametrize("use_openat2", WAYS)
def test_the_fd_holds_the_file_not_the_path(root, use_openat2):
    """Replacing the path after the check changes nothing for the holder of the fd."""
    fd = open_root(str(root))
    try:
        pfd, st = open_regular(fd, "/etc/conf", use_openat2)
    finally:
        os.close(fd)
    os.unlink(root / "etc" / "conf")
    (root / "etc" / "conf").symlink_to("/etc/passwd")
    rfd = reopen(pfd, os.O_RDONLY)
    assert os.read(rfd, 100) == b"inside"
    os.close(rfd)
    os.close(pfd)
