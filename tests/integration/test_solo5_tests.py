"""The non-device tests of Solo5's suite (shared/spec/tests.md), built with `ukvm build` and run
with `ukvm run --mem=4096`, with the same pass criteria as upstream's harness."""
import struct
import subprocess

import pytest

from conftest import expect_abort, expect_fpu_result, expect_success, needs_kvm, run_hvt

pytestmark = needs_kvm
MEM = "--mem=4096"


@pytest.fixture(params=["cpl3", "cpl0"])
def mode(request):
    return request.param


@pytest.fixture
def build(guest, mode):
    """The guest builder for this test's mode: default (CPL3 on ukvm) or --cpl0."""
    return lambda name, manifest=None: guest(name, manifest, cpl0=(mode == "cpl0"))


def test_noexec_host(build):
    # The image names a non-existent interpreter, so the host refuses to run it.
    p = subprocess.run(["bash", "-c", str(build("test_hello"))], capture_output=True, text=True)
    assert p.returncode == 127
    assert "No such file or directory" in p.stderr or "required file not found" in p.stderr


def test_hello(build):
    p = run_hvt(MEM, build("test_hello"), "Hello_Solo5")
    expect_success(p)
    assert "Hello, World" in p.output
    assert "Command line is: 'Hello_Solo5'" in p.output


def test_hello_strips_runtime_options(build):
    p = run_hvt(MEM, "--", build("test_hello"), "  --solo5:debug   Hello_Solo5")
    expect_success(p)
    assert "tscclock_init()" in p.output   # debug level took effect


def test_quiet(build):
    p = run_hvt(MEM, "--", build("test_quiet"), "--solo5:quiet")
    expect_success(p)
    assert "Solo5:" not in p.output


def test_output(build):
    p = run_hvt(MEM, build("test_output"), "Output_Solo5")
    assert p.returncode == 0, p.output
    assert p.output.count("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-\n") == 72


def test_globals(build):
    expect_success(run_hvt(MEM, build("test_globals")))


def test_exception(build, mode):
    p = run_hvt(MEM, build("test_exception"))
    expect_abort(p)
    # Page-fault error code: write (0x2), plus user (0x4) when the access came from CPL3.
    assert f"Solo5: trap: type=#PF ec={'0x6' if mode == 'cpl3' else '0x2'}" in p.output
    assert "Solo5: trap: cr2=0x400000000" in p.output


def test_zeropage(build):
    p = run_hvt(MEM, build("test_zeropage"))
    expect_abort(p)
    assert "cr2=0x8\n" in p.output


def test_xnow(build):
    # Hardware KVM: KVM_RUN fails with EFAULT. kvm_pvm: an MMIO write exit on a read-only page.
    # ukvm reports both as the translation fault upstream's test expects.
    p = run_hvt(MEM, build("test_xnow"))
    assert p.returncode == 1, p.output
    assert "host/guest translation fault" in p.output


def test_notls(build, mode):
    p = run_hvt(MEM, build("test_notls"))
    expect_abort(p)
    assert f"ec={'0x4' if mode == 'cpl3' else '0x0'} " in p.output and "cr2=0x28\n" in p.output


def test_tls(build):
    expect_success(run_hvt(MEM, build("test_tls")))


def test_ssp(build):
    p = run_hvt(MEM, build("test_ssp"))
    expect_abort(p)
    assert "Solo5: ABORT: Stack corruption detected\n\0" in p.output


def test_fpu(build, mode):
    expect_fpu_result(run_hvt(MEM, build("test_fpu")), code_at_cpl0=(mode == "cpl0"))


def test_time(build):
    expect_success(run_hvt(MEM, build("test_time")))


def test_abort(build):
    p = run_hvt(MEM, build("test_abort"))
    assert p.returncode == 255, p.output
    assert "Solo5: solo5_abort() called" in p.output


@pytest.mark.parametrize("status,expected", [("0", 0), ("42", 42), ("256", 0), ("-1", 255), ("300", 44)])
def test_exit_status_is_low_byte(build, status, expected):
    p = run_hvt("--mem=8", build("test_exit"), status)
    assert p.returncode == expected, p.output
    assert f"solo5_exit({status}) called" in p.output


def _buggy_copy(src, dst):
    """test_buggyelf: the MFT1 note's n_descsz set to 1, so removing its pad underflows."""
    data = bytearray(src.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    for i in range(phnum):
        p_type, _flags, p_offset = struct.unpack_from("<IIQ", data, phoff + 56 * i)
        if p_type == 4 and struct.unpack_from("<I", data, p_offset + 8)[0] == 0x3154464D:
            struct.pack_into("<I", data, p_offset + 4, 1)
            dst.write_bytes(data)
            return i
    raise AssertionError("no MFT1 note")


def test_buggyelf(build, tmp_path):
    buggy = tmp_path / "buggyelf.hvt"
    idx = _buggy_copy(build("test_hello"), buggy)
    p = run_hvt(MEM, buggy)
    assert p.returncode == 1, p.output
    assert "note does not fall within valid size" in p.output
    assert (f"{buggy}: INV_EXE: phdr[{idx}] note does not fall within valid size "
            "(18446744073709551613 <= 0 || 18446744073709551613 > 1)") in p.output
