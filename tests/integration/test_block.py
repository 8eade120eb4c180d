"""Block devices (issue 3): tests.md's blk cases, several devices, persistence and durability."""
import json
import signal
import struct
import subprocess
import sys

import pytest

from conftest import needs_kvm, read_until, run_hvt

pytestmark = needs_kvm


def manifest(*names):
    return json.dumps({"type": "solo5.manifest", "version": 1,
                       "devices": [{"name": n, "type": "BLOCK_BASIC"} for n in names]})


STORAGE = manifest("storage")


def image(tmp_path, size, name="storage.img"):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def expect_success(p):
    assert p.returncode == 0, p.output
    assert "SUCCESS" in p.output


@pytest.mark.parametrize("cpl0", [True, False], ids=["cpl0", "cpl3"])
@pytest.mark.parametrize("sector", [None, 512, 1024, 4096, 32768])
def test_blk(guest, tmp_path, sector, cpl0):
    img = image(tmp_path, 4 << 20)
    opts = [f"--block:storage={img}"] + ([f"--block-sector-size:storage={sector}"] if sector else [])
    p = run_hvt("--mem=4096", *opts, "--", guest("test_blk", STORAGE, cpl0=cpl0))
    expect_success(p)
    assert f"block_size {sector or 512}\n" in p.output


def test_sector_size_may_come_first(guest, tmp_path):
    img = image(tmp_path, 1 << 20)
    p = run_hvt("--block-sector-size:storage=4096", f"--block:storage={img}", guest("test_blk", STORAGE))
    expect_success(p)
    assert "block_size 4096\n" in p.output


@pytest.mark.parametrize("size,sector,message", [
    (6144, 4096, "ukvm: storage: Backing storage size must be block aligned (4096 bytes)"),      # misaligned
    (256, None, "ukvm: storage: Backing storage size must be block aligned (512 bytes)"),
    (0, None, "ukvm: storage: Backing storage must be at least 1 block (512 bytes) in size"),
    (1563, 521, "ukvm: Block size must be a multiple of 2 greater than or equal 512\n"
                "ukvm: Invalid option: `--block-sector-size:storage=521'"),                      # odd
    (256, 256, "ukvm: Block size must be a multiple of 2 greater than or equal 512\n"
               "ukvm: Invalid option: `--block-sector-size:storage=256'"),                       # too small
    (4096, 65536, "ukvm: Invalid option: `--block-sector-size:storage=65536'"),
])
def test_blk_rejected_before_the_guest_runs(guest, tmp_path, size, sector, message):
    img = image(tmp_path, size)
    opts = [f"--block:storage={img}"] + ([f"--block-sector-size:storage={sector}"] if sector else [])
    p = run_hvt("--mem=64", *opts, "--", guest("test_blk", STORAGE))
    assert p.returncode == 1, p.output
    assert message in p.output
    assert "Solo5" not in p.output


def test_missing_image(guest, tmp_path):
    p = run_hvt(f"--block:storage={tmp_path}/nope.img", guest("test_blk", STORAGE))
    assert p.returncode == 1
    assert p.output == f"ukvm: Could not open block device: {tmp_path}/nope.img: No such file or directory\n"


def test_directory_is_not_an_image(guest, tmp_path):
    p = run_hvt(f"--block:storage={tmp_path}", guest("test_blk", STORAGE))
    assert p.returncode == 1
    assert "Could not open block device" in p.output and "Is a directory" in p.output


def test_not_attached(guest):
    p = run_hvt("--mem=64", guest("test_blk", STORAGE))
    assert p.returncode == 1
    assert "ukvm: Device 'storage' of type BLOCK_BASIC declared but not attached." in p.output


def test_undeclared_name(guest, tmp_path):
    img = image(tmp_path, 4096)
    p = run_hvt(f"--block:other={img}", guest("test_blk", STORAGE))
    assert p.returncode == 1
    assert "ukvm: Resource not declared in manifest: 'other'\nukvm: Invalid option: `--block:other=" in p.output


def test_later_option_wins(guest, tmp_path):
    first, second = image(tmp_path, 4096, "a.img"), image(tmp_path, 4096, "b.img")
    p = run_hvt(f"--block:storage={first}", f"--block:storage={second}", guest("test_blkloop", STORAGE))
    expect_success(p)
    assert first.read_bytes() == bytes(4096)
    assert second.read_bytes() != bytes(4096)


@pytest.mark.parametrize("attack", ["read-into-text", "outside-memory"])
def test_bad_buffers_are_fatal(guest, tmp_path, attack):
    img = image(tmp_path, 4096)
    p = run_hvt("--mem=64", f"--block:storage={img}", guest("test_blk", STORAGE), attack)
    assert p.returncode == 1, p.output
    assert "ukvm: Invalid guest access: gpa=0x" in p.output
    assert img.read_bytes() == bytes(4096)


def test_two_devices(guest, tmp_path):
    d0, d1 = image(tmp_path, 64 << 10, "d0.img"), image(tmp_path, 32 << 10, "d1.img")
    p = run_hvt(f"--block:disk0={d0}", f"--block:disk1={d1}", "--block-sector-size:disk1=4096",
                guest("test_blk2", manifest("disk0", "disk1")))
    expect_success(p)
    for path, seed in ((d0, 0x1111111111111111), (d1, 0x2222222222222222)):
        data = path.read_bytes()
        words = struct.unpack(f"<{len(data) // 8}Q", data)
        assert all(w == seed ^ (8 * i) for i, w in enumerate(words))


def block_pattern(n, size=512):
    return struct.pack(f"<{size // 8}Q", *(((n + 1) * 0x9E3779B97F4A7C15 ^ i) & (2**64 - 1) for i in range(size // 8)))


def test_second_boot_reads_what_the_first_wrote(guest, tmp_path):
    img = image(tmp_path, 256 << 10)
    expect_success(run_hvt(f"--block:storage={img}", guest("test_blkloop", STORAGE)))
    data = img.read_bytes()
    assert data[:512] == block_pattern(0) and data[-512:] == block_pattern(511)
    expect_success(run_hvt(f"--block:storage={img}", guest("test_blkloop", STORAGE), "verify"))


def _start_writer(guest, img):
    return subprocess.Popen([sys.executable, "-m", "ukvm", "run", "--mem=64", f"--block:storage={img}",
                             str(guest("test_blkloop", STORAGE))], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_acknowledged_writes_survive_the_tender_ending(guest, tmp_path, sig):
    blocks = 1 << 16
    img = image(tmp_path, blocks * 512)   # far more blocks than get written before the signal
    proc = _start_writer(guest, img)
    try:
        buf = read_until(proc, b"ack ", timeout=60, count=300)
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    complete_lines = (buf + rest).split(b"\n")[:-1]     # a kill may cut the last line short
    acks = [int(line[4:]) for line in complete_lines if line.startswith(b"ack ")]
    assert len(acks) >= 290 and acks == list(range(len(acks)))
    assert acks[-1] < blocks - 1, "the guest finished before the signal; nothing was tested"
    if sig == signal.SIGTERM:
        assert proc.returncode == 1 and err == b"ukvm: Exiting on signal 15\n"
    else:
        assert proc.returncode == -signal.SIGKILL
    with open(img, "rb") as f:
        for n in acks:
            assert f.read(512) == block_pattern(n), f"acknowledged block {n} lost"


@pytest.mark.parametrize("cpl0", [True, False], ids=["cpl0", "cpl3"])
def test_mft_maxdevices(guest, tmp_path, cpl0):
    names = [f"storage{i}" for i in range(63)]
    opts = [f"--block:{n}={image(tmp_path, 4096, n + '.img')}" for n in names]
    expect_success(run_hvt("--mem=4096", *opts, "--", guest("test_mft_maxdevices", manifest(*names), cpl0=cpl0)))
