"""Snapshots, clones and reset (issue 13), in the library and through `ukvm run`.

tests/guests/test_snapshot.c counts its runs in .bss and dirties 64 pages after its first yield
(where the snapshot is taken): every clone run must print runs=1, however often it was reset.
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import solo5_sdk
from conftest import GUESTS, needs_kvm, read_until, ukvm
from ukvm.errors import UkvmError
from ukvm.machine.clone import Clone
from ukvm.machine.snapshot import SnapshotError
from ukvm.machine.vm import VM, Kernel

pytestmark = needs_kvm
RESUMED = re.compile(rb"resumed: runs=(\d+) scratch=(\d+) clock_ok=(\d+) wall_s=(\d+)")


@pytest.fixture(scope="module", params=["cpl3", "cpl0"])
def image(request, guest):
    return guest("test_snapshot", cpl0=request.param == "cpl0")


def boot_to_ready(path) -> VM:
    kernel = Kernel(str(path))
    vm = VM(kernel, [], 32 << 20)
    kernel.close()
    vm.core.on_idle = vm.request_stop
    assert vm.run() is None                    # stopped at the first idle POLL, not halted
    return vm


def test_clones_run_from_the_snapshot_and_reset_to_it(image, capfd):
    vm = boot_to_ready(image)
    snap = vm.snapshot()
    vm.close()
    fds_before = len(os.listdir("/proc/self/fd"))
    clone = VM.from_snapshot(snap)
    try:
        for _ in range(20):
            assert clone.run() == 1            # the guest's exit status is its run count
            clone.reset()
        other = VM.from_snapshot(snap)         # a second clone of the same snapshot
        assert other.run() == 1
        other.close()
    finally:
        clone.close()
        snap.close()
    out = capfd.readouterr().out.encode()
    runs = RESUMED.findall(out)
    assert len(runs) == 21, out
    assert {r[:3] for r in runs} == {(b"1", b"1", b"1")}     # runs, scratch and the clock as at the snapshot
    assert len(os.listdir("/proc/self/fd")) == fds_before - 1  # the snapshot's memfd is closed too


def test_reset_is_only_for_clones(image):
    vm = boot_to_ready(image)
    try:
        assert not isinstance(vm, Clone) and not hasattr(vm, "reset")
        snap = vm.snapshot()
    finally:
        vm.close()
    clone = VM.from_snapshot(snap)
    try:
        assert isinstance(clone, Clone)
        clone.close()
        with pytest.raises(UkvmError, match="reset: the clone is closed"):
            clone.reset()
    finally:
        clone.close()
        snap.close()


def test_a_clone_keeps_no_copy_of_the_pages_it_wrote(image):
    """The restore plan holds page numbers, not pages: after runs that write 64+ pages, what
    Python holds for the clone grew by less than the plan's stated bound (a little over 3 KiB for
    32 MiB), where the plan before kept a second copy of each page (256+ KiB)."""
    vm = boot_to_ready(image)
    snap = vm.snapshot()
    vm.close()
    clone = VM.from_snapshot(snap)
    try:
        assert clone.run() == 1
        tracemalloc.start()
        try:
            clone.reset()
            assert clone.run() == 1
            clone.reset()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert clone.pages_written >= 64
        assert clone.plan.held_bytes() <= clone.plan.bound() < 64 * 4096 // 16
        assert kept < clone.plan.bound() + 16 * 1024, kept
    finally:
        clone.close()
        snap.close()


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb (scripts/test.sh installs it)")
def test_gdb_on_a_restored_snapshot(image, tmp_path):
    """`ukvm run --gdb --restore=FILE` waits for a debugger that sees the snapshot's registers
    and can run the guest to its end (it ended in an AttributeError traceback)."""
    snap = tmp_path / "g.snap"
    assert ukvm("run", "--mem=32", "--snapshot-at=ready", f"--snapshot={snap}", image).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--gdb", "--gdb-port=0", f"--restore={snap}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = read_until(proc, b"target remote localhost:", timeout=30)
        out += read_until(proc, b"\n", timeout=5)
        m = re.search(rb"target remote localhost:(\d+)\" (\S+)", out)
        assert m and m[2] == str(image).encode(), out
        gdb = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote localhost:{int(m[1])}",
                              "-ex", "info registers rip", "-ex", "continue", str(image)],
                             capture_output=True, text=True, timeout=120)
        assert re.search(r"^rip\s+0x[0-9a-f]+", gdb.stdout, re.M), gdb.stdout + gdb.stderr
        assert "exited with code 01" in gdb.stdout, gdb.stdout + gdb.stderr
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and b"Traceback" not in out + rest
    assert RESUMED.search(out + rest)


def test_snapshot_file_round_trip_through_the_cli(image, tmp_path):
    snap = tmp_path / "ready.snap"
    p = ukvm("run", "--mem=32", "--snapshot-at=ready", f"--snapshot={snap}", image)
    assert p.returncode == 0 and b"snapshot written to" in p.stdout, p.stdout
    assert b"booted" in p.stdout and b"resumed" not in p.stdout
    time.sleep(1.2)
    for _ in range(2):                           # a snapshot file restores any number of times
        p = ukvm("run", "--stats", f"--restore={snap}")
        assert p.returncode == 1, p.stdout
        m = RESUMED.search(p.stdout)
        assert m and m.groups()[:3] == (b"1", b"1", b"1"), p.stdout
        assert abs(int(m.group(4)) - time.time()) < 5       # the wall clock is read fresh
        assert b"booted" not in p.stdout                     # no second boot
        assert re.search(rb"\nwalltime +1 ", p.stdout) and re.search(rb"\nhalt +1 ", p.stdout), p.stdout


def test_solo5_built_guest_snapshots_under_the_supervisor(tmp_path):
    if not solo5_sdk.available():
        pytest.skip(solo5_sdk.MISSING)
    image = solo5_sdk.build(GUESTS / "test_snapshot.c", tmp_path / "snap-solo5.hvt")
    snap = tmp_path / "s.snap"
    p = ukvm("run", "--mem=32", "--snapshot-at=ready", f"--snapshot={snap}", image)
    assert p.returncode == 0, p.stdout
    p = ukvm("run", f"--restore={snap}")
    assert p.returncode == 1 and RESUMED.search(p.stdout).groups()[:3] == (b"1", b"1", b"1"), p.stdout


@pytest.mark.parametrize("args, message", [
    (["--snapshot-at=ready"], "--snapshot-at=ready and --snapshot=FILE go together"),
    (["--snapshot-at=boot", "--snapshot=x"], "Malformed argument to --snapshot-at"),
    (["--restore=x", "KERNEL"], "no KERNEL or ARGS may be given"),
    (["--mem=64", "--restore=SNAP"], "--mem and --x-guest-cpl cannot be given with --restore"),
])
def test_cli_usage_errors(image, args, message, tmp_path):
    snap = tmp_path / "s.snap"
    if any("SNAP" in a for a in args):
        assert ukvm("run", "--mem=32", "--snapshot-at=ready", f"--snapshot={snap}", image).returncode == 0
    args = [a.replace("SNAP", str(snap)) for a in args]
    kernel = [] if "KERNEL" in args or any(a.startswith("--restore") for a in args) else [image]
    p = ukvm("run", *[image if a == "KERNEL" else a for a in args] + kernel)
    assert p.returncode != 0 and message.encode() in p.stdout and b"Traceback" not in p.stdout, p.stdout


def test_corrupt_or_foreign_snapshot_files_are_one_line(image, tmp_path):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"UKVMSNAP" + os.urandom(200))
    for path, message in ((bad, b"invalid snapshot"), (image, b"not a ukvm snapshot"), (tmp_path / "none", b"No such file")):
        p = ukvm("run", f"--restore={path}")
        lines = p.stdout.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and message in lines[0], p.stdout


def test_restore_needs_the_snapshots_devices(tmp_path, guest):
    """A snapshot of a guest with a block device restores only with a file of the same geometry."""
    manifest = '{"type": "solo5.manifest", "version": 1, "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]}'
    image = guest("test_snapshot", manifest, cpl0=False)
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(64 * 1024))
    snap = tmp_path / "blk.snap"
    p = ukvm("run", "--mem=32", f"--block:storage={disk}", "--snapshot-at=ready", f"--snapshot={snap}", image)
    assert p.returncode == 0, p.stdout
    p = ukvm("run", f"--restore={snap}")
    assert p.returncode != 0 and b"declared but not attached" in p.stdout, p.stdout
    small = tmp_path / "small"
    small.write_bytes(bytes(4096))
    p = ukvm("run", f"--block:storage={small}", f"--restore={snap}")
    assert p.returncode == 1 and b"the snapshot's guest saw 65536 bytes" in p.stdout, p.stdout
    p = ukvm("run", f"--block:storage={disk}", f"--restore={snap}")
    assert p.returncode == 1 and RESUMED.search(p.stdout), p.stdout


def test_snapshot_errors_are_one_line_ukvm_errors(tmp_path):
    """A missing or foreign file is a SnapshotError the CLI reports as one line with exit status
    1 (it is a UkvmError), naming the file and the cause."""
    from ukvm.machine.snapshot import Snapshot
    with pytest.raises(SnapshotError) as e:
        Snapshot.load(str(tmp_path / "none"))
    assert str(e.value) == f"{tmp_path / 'none'}: No such file or directory"
    assert isinstance(e.value, UkvmError) and e.value.exit_code == 1
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"ELF" * 100)
    with pytest.raises(SnapshotError, match=r"^\S+/foreign: invalid snapshot: not a ukvm snapshot \(bad magic\)$"):
        Snapshot.load(str(foreign))


sys.path.insert(0, str(GUESTS.parent / "unit"))
from test_snapshot_file import metadata_edits, snapshot_metadata  # noqa: E402


@pytest.fixture(scope="module")
def block_snapshot(guest, tmp_path_factory):
    """A snapshot file of test_snapshot with a block device, and the disk it needs."""
    out = tmp_path_factory.mktemp("fuzz")
    manifest = '{"type": "solo5.manifest", "version": 1, "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]}'
    image = guest("test_snapshot", manifest, cpl0=False)
    disk = out / "disk"
    disk.write_bytes(bytes(65536))
    snap = out / "ready.snap"
    p = ukvm("run", "--mem=32", f"--block:storage={disk}", "--snapshot-at=ready", f"--snapshot={snap}", image)
    assert p.returncode == 0, p.stdout
    return snap, disk


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_metadata_restores_or_is_one_line(block_snapshot, tmp_path, data):
    """Snapshot metadata changed behind a recomputed CRC, then restored as `ukvm run --restore`
    does (devices attached, the guest run, bounded by a stop after 2 s): a one-line UkvmError at
    load, at restore or from the run, or a run that ends; never another exception."""
    from test_snapshot_file import rewrite
    from ukvm.machine.snapshot import Snapshot
    from ukvm.modules import default_modules
    original, disk = block_snapshot
    path = tmp_path / f"f{data.draw(st.integers(0, 1 << 30))}.snap"
    shutil.copyfile(original, path)
    edit = data.draw(metadata_edits(snapshot_metadata(path)))
    rewrite(path, edit)
    try:
        snap = Snapshot.load(str(path))
    except SnapshotError as e:
        assert "\n" not in str(e), edit.description
        return
    try:
        modules = default_modules(snap.manifest())
        for m in modules:
            m.warn = lambda msg: None
        stop = None
        try:
            next(m for m in modules if m.name == "block").attach("storage", str(disk))
            clone = VM.from_snapshot(snap, modules, warn=lambda msg: None)
        except UkvmError as e:
            assert "\n" not in str(e), (edit.description, str(e))
            return
        try:
            stop = threading.Timer(2, clone.request_stop)
            stop.start()
            status = clone.run()
            assert status is None or 0 <= status <= 255
        except UkvmError as e:
            assert "\n" not in str(e), (edit.description, str(e))
        finally:
            if stop is not None:
                stop.cancel()
            clone.close()
    finally:
        snap.close()
        path.unlink()
