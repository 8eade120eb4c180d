"""Snapshot files are made with O_EXCL under a fresh name in the target's directory, synced and
renamed: a symlink standing at the final name or at a temporary name is never followed."""
import ctypes
import os

import pytest

import ukvm.machine.snapshot as snapshot_module
from elfgen import manifest_payload
from ukvm.kvm import abi
from ukvm.machine.snapshot import HEADER, MAGIC, Snapshot, SnapshotError, SnapshotWriter, VcpuState

SIZE = 2 << 20


@pytest.fixture
def snap():
    fd = os.memfd_create("test-snap", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, b"guest bytes", 4096)
    vcpu = VcpuState(bytes(ctypes.sizeof(abi.kvm_regs)), bytes(ctypes.sizeof(abi.kvm_sregs)),
                     bytes(ctypes.sizeof(abi.kvm_fpu)), None, {}, 0)
    s = Snapshot(fd, 0, SIZE, SIZE, {"readonly": [], "noaccess": []}, vcpu, 0, 0, 0, False, manifest_payload(), {})
    yield s
    s.close()


@pytest.fixture
def victim(tmp_path):
    """A file someone else owns, which a symlink points at."""
    path = tmp_path / "elsewhere" / "victim"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


def assert_snapshot_file(path):
    assert not path.is_symlink() and path.is_file()
    assert path.stat().st_mode & 0o777 == 0o600
    head = path.read_bytes()[:HEADER.size]
    assert HEADER.unpack(head)[0] == MAGIC
    assert Snapshot.load(str(path)).size == SIZE


def test_symlink_at_the_final_name_is_replaced_not_followed(snap, victim, tmp_path):
    target = tmp_path / "out.snap"
    target.symlink_to(victim)
    snap.save(str(target))
    assert victim.read_bytes() == b"precious"
    assert_snapshot_file(target)


def test_symlink_at_the_old_fixed_temporary_name_is_not_followed(snap, victim, tmp_path):
    target = tmp_path / "out.snap"
    (tmp_path / f"out.snap.tmp{os.getpid()}").symlink_to(victim)      # the name older versions used
    snap.save(str(target))
    assert victim.read_bytes() == b"precious"
    assert_snapshot_file(target)


@pytest.mark.parametrize("dangling", [False, True])
def test_symlinks_at_the_temporary_names_are_skipped(snap, victim, tmp_path, monkeypatch, dangling):
    """Whatever temporary name comes up, a symlink planted there (to a file, or dangling: O_CREAT
    would create its target) is not opened; the next name is tried."""
    names = iter(["aaaa", "bbbb", "cccc"])
    monkeypatch.setattr(snapshot_module.secrets, "token_hex", lambda n: next(names))
    link_to = tmp_path / "elsewhere" / "created-by-root" if dangling else victim
    for planted in ("aaaa", "bbbb"):
        (tmp_path / f".out.snap.{planted}.tmp").symlink_to(link_to)
    snap.save(str(tmp_path / "out.snap"))
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "elsewhere" / "created-by-root").exists()
    assert_snapshot_file(tmp_path / "out.snap")
    assert not (tmp_path / ".out.snap.cccc.tmp").exists()          # renamed into place
    assert (tmp_path / ".out.snap.aaaa.tmp").is_symlink()          # the planted links are left alone


def test_no_free_temporary_name_is_one_error(snap, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_module.secrets, "token_hex", lambda n: "same")
    (tmp_path / ".out.snap.same.tmp").write_bytes(b"")
    with pytest.raises(SnapshotError, match="no free temporary name"):
        snap.save(str(tmp_path / "out.snap"))


def test_a_failed_write_leaves_no_temporary_file(snap, tmp_path, monkeypatch):
    def broken(*a):
        raise OSError(28, os.strerror(28))
    monkeypatch.setattr(snapshot_module, "copy_range", broken)
    with pytest.raises(SnapshotError, match="No space left"):
        snap.save(str(tmp_path / "out.snap"))
    assert os.listdir(tmp_path) == []


def test_writer_opens_before_writing(snap, tmp_path):
    """The file exists (empty, under its temporary name) from the constructor on: a confined
    tender writes it later without opening anything."""
    writer = SnapshotWriter(str(tmp_path / "out.snap"))
    try:
        assert [n for n in os.listdir(tmp_path) if n.startswith(".out.snap.")] and not (tmp_path / "out.snap").exists()
        writer.write(snap)
    finally:
        writer.close()
    assert_snapshot_file(tmp_path / "out.snap")
    assert os.listdir(tmp_path) == ["out.snap"]


def test_missing_directory_is_one_error(tmp_path):
    with pytest.raises(SnapshotError, match="No such file"):
        SnapshotWriter(str(tmp_path / "nowhere" / "out.snap"))
