"""`ukvm run` / `ukvm-hvt` as a drop-in for solo5-hvt: options, messages, exit statuses."""
import shutil
import subprocess
import sys

import pytest

from conftest import needs_kvm, run_hvt, ukvm


def test_help_exits_1_with_usage():
    p = run_hvt("--help")
    assert p.returncode == 1
    assert "KERNEL" in p.output and "Compiled-in modules: core" in p.output


def test_version_exits_0():
    p = run_hvt("--mem=1", "--version", "nonexistent.hvt")
    assert p.returncode == 0
    assert p.output.splitlines() == ["ukvm tender, version 0.1.0", "ABI version 2"]


def test_missing_kernel():
    p = run_hvt("--mem=64")
    assert p.returncode == 1
    assert p.output.startswith("ukvm: Missing KERNEL operand\nusage:")


@needs_kvm
def test_invalid_option(guest):
    p = run_hvt("--frobnicate", guest("test_hello"))
    assert p.returncode == 1
    assert "ukvm: Invalid option: `--frobnicate'\nusage:" in p.output


@needs_kvm
@pytest.mark.parametrize("arg", ["-", "--block:stor-age=x", "--net:serv_ice0=tap0", "--mem"])
def test_declined_options_are_invalid(guest, arg):
    p = run_hvt(arg, guest("test_hello"))
    assert p.returncode == 1
    assert f"Invalid option: `{arg}'" in p.output


@needs_kvm
@pytest.mark.parametrize("value", ["", "1", "cpl3", "03"])
def test_malformed_guest_cpl(guest, value):
    p = run_hvt(f"--x-guest-cpl={value}", guest("test_hello"))
    assert p.returncode == 1
    assert p.output.startswith(f"ukvm: Malformed argument to --x-guest-cpl (auto, 0 or 3): `{value}'\nusage:")


@needs_kvm
@pytest.mark.parametrize("value", ["", "abc", "0", "0x10", " -0"])
def test_malformed_mem(guest, value):
    p = run_hvt(f"--mem={value}", guest("test_hello"))
    assert p.returncode == 1
    assert "ukvm: Malformed argument to --mem" in p.output


@needs_kvm
@pytest.mark.parametrize("value,adjusted", [("3", 2 << 20), ("1x", 2 << 20), ("4097", 4 << 30)])
def test_mem_is_rounded_down_to_2mib(guest, value, adjusted):
    p = run_hvt(f"--mem={value}", guest("test_hello"), "Hello_Solo5")
    assert p.returncode == 0, p.output
    assert f"ukvm: adjusting memory to {adjusted} bytes" in p.output


@needs_kvm
@pytest.mark.parametrize("value", ["4098", "-1"])
def test_mem_over_4gib_fails(guest, value):
    p = run_hvt(f"--mem={value}", guest("test_hello"))
    assert p.returncode == 1
    assert "exceeds the max size 4294967296 bytes" in p.output


@needs_kvm
def test_guest_sees_memory_size(guest):
    p = run_hvt("--mem=64", guest("test_hello"))
    assert "Memory map: 64 MB addressable:" in p.output
    assert "< stack < 0x4000000" in p.output


@needs_kvm
def test_arguments_after_kernel_belong_to_guest(guest):
    p = run_hvt("--mem=8", guest("test_hello"), "--version", "", "b")
    assert p.returncode == 0
    assert "Command line is: '--version  b'" in p.output


@needs_kvm
def test_double_dash_ends_options(guest):
    p = run_hvt("--mem=8", "--", guest("test_hello"), "Hello_Solo5")
    assert p.returncode == 0 and "SUCCESS" in p.output


@needs_kvm
def test_command_line_limit(guest):
    ok = run_hvt("--mem=8", guest("test_hello"), "x" * 8191)
    assert ok.returncode == 0, ok.output[-300:]
    too_long = run_hvt("--mem=8", guest("test_hello"), "x" * 8192)
    assert too_long.returncode == 1
    assert "ukvm: Guest command line too long (max=8191 characters)" in too_long.output


@pytest.mark.parametrize("content,message", [
    (b"", "invalid executable: elf header does not match the expected size (0 != 64)"),
    (b"#!/bin/sh\necho hi\n" + bytes(64), "invalid executable: invalid or unsupported executable "
                                         "(elf header invalid while loading note)"),
])
def test_not_an_executable(tmp_path, content, message):
    k = tmp_path / "k"
    k.write_bytes(content)
    p = run_hvt(k)
    assert p.returncode == 1
    assert p.output == f"ukvm: {k}: {message}\n"


def test_host_binary_is_rejected():
    p = run_hvt(sys.executable)
    assert p.returncode == 1
    assert "elf header invalid while loading note" in p.output
    assert "Traceback" not in p.output


def test_missing_kernel_file(tmp_path):
    p = run_hvt(tmp_path / "nope.hvt")
    assert p.returncode == 1
    assert p.output == f"ukvm: {tmp_path / 'nope.hvt'}: Could not open: No such file or directory\n"


@needs_kvm
def test_undeclared_devices_must_be_attached(guest):
    manifest = '{"type": "solo5.manifest", "version": 1, "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]}'
    p = run_hvt("--mem=8", guest("test_hello", manifest))
    assert p.returncode == 1
    assert "ukvm: Device 'storage' of type BLOCK_BASIC declared but not attached." in p.output
    assert "ukvm: All declared devices must be attached. See --help for syntax." in p.output


@needs_kvm
def test_ukvm_hvt_and_module_entry_points_agree(guest):
    exe = shutil.which("ukvm-hvt")
    if exe is None:
        pytest.skip("ukvm-hvt console script not installed (pip install -e . provides it)")
    p = subprocess.run([exe, "--mem=8", guest("test_hello"), "Hello_Solo5"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "SUCCESS" in p.stdout
    bad = subprocess.run([exe, "--bogus", guest("test_hello")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.startswith("ukvm-hvt: Invalid option: `--bogus'")


def test_main_command_usage():
    assert ukvm().returncode == 1
    assert ukvm("frob").returncode == 1
    p = ukvm("--version")
    assert p.returncode == 0 and b"ukvm 0.1.0" in p.stdout
