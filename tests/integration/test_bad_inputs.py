"""Hostile or broken input files and command lines: one line on stderr, status 1, no traceback."""
import os
import struct
import sys
from pathlib import Path

import pytest

from conftest import run_hvt, ukvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from elfgen import abi_note, make_elf, mft_note, note  # noqa: E402

TEXT = b"\xf4" * 16


def _huge_phnum():
    data = bytearray(make_elf())
    struct.pack_into("<H", data, 0x38, 0xFFFF)          # e_phnum: far more headers than the file has
    return bytes(data)


CASES = {
    "overlap": make_elf(segments=[(0x100000, TEXT, 0x3000, 5, 0x1000), (0x101000, TEXT, 0x1000, 6, 0x1000)]),
    "past_memory": make_elf(segments=[(0x7FF000, TEXT, 0x2000, 5, 0x1000)]),
    "wrap_2_64": make_elf(segments=[(0x100000, TEXT, 2**64 - 0x100000 + 0x1000, 5, 0x1000)]),
    "wx": make_elf(segments=[(0x100000, TEXT, 16, 7, 0x1000)]),
    "huge_phnum": _huge_phnum(),
    "entry_low": make_elf(entry=0x1000),
    "no_notes": make_elf(notes=[]),
    "spt_target": make_elf(notes=[abi_note(target=2), mft_note()]),
    "abi_v3": make_elf(notes=[abi_note(version=3), mft_note()]),
    "bad_manifest": make_elf(notes=[abi_note(), mft_note(b"\x01\x00\x00\x00\x41\x00\x00\x00")]),
    "mft_underflow": make_elf(notes=[abi_note(), note(0x3154464D, b"x")]),
    "truncated": make_elf()[:0x40],
    "empty": b"",
    "text": b"hello\n" * 20,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_kernel_file(tmp_path, name):
    path = tmp_path / f"{name}.hvt"
    path.write_bytes(CASES[name])
    p = run_hvt("--mem=8", path)
    assert p.returncode == 1, p.output
    lines = p.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ukvm: {path}: "), p.output


@pytest.mark.parametrize("manifest,message", [
    (b"{", "JSON parse error"),
    (b'{"type": "solo5.manifest", "version": 1, "devices": [' + b",".join(
        b'{"name": "d%d", "type": "BLOCK_BASIC"}' % i for i in range(64)) + b"]}", "too many entries, maximum 63"),
    (b'{"type": "solo5.manifest", "version": 1, "devices": [{"name": "a/b", "type": "NET_BASIC"}]}',
     "name is not alphanumeric"),
    (b"\xff\xfe\x00", "Could not open"),
])
def test_bad_manifest_source(tmp_path, manifest, message):
    src = tmp_path / "manifest.json"
    src.write_bytes(manifest)
    p = ukvm("manifest", "gen", src, tmp_path / "out.c")
    err = p.stdout.decode()
    assert p.returncode == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.c").exists()


@pytest.mark.parametrize("args", [["--mem=-5", "x.hvt"], ["--net:x"], ["--block:a=b"], ["--mem="]])
def test_bad_command_lines_never_trace_back(args):
    p = run_hvt(*args)
    assert p.returncode == 1
    assert "Traceback" not in p.output


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args,env,message", [
    (["build", ROOT / "examples" / "hello", "-o", "/nonexistent/dir/x.hvt"], {},
     "ukvm build: /nonexistent/dir/x.hvt: No such file or directory"),
    (["manifest", "gen", ROOT / "examples" / "hello" / "missing.json", "-"], {},
     "ukvm manifest: "),
    (["build", ROOT / "examples" / "hello", "-o", "/tmp/never.hvt"], {"CC": "nosuchcc"},
     "ukvm build: nosuchcc: command not found (install gcc and binutils)"),
])
def test_tool_errors_are_one_line(args, env, message):
    p = ukvm(*args, env={**os.environ, **env})
    out = p.stdout.decode()
    assert p.returncode == 1 and out.startswith(message) and len(out.splitlines()) == 1, out


def test_manifest_output_in_missing_directory(tmp_path):
    src = tmp_path / "m.json"
    src.write_text('{"type": "solo5.manifest", "version": 1, "devices": []}')
    p = ukvm("manifest", "gen", src, tmp_path / "nope" / "out.c")
    assert p.returncode == 1
    assert p.stdout.decode() == f"ukvm manifest: {tmp_path / 'nope' / 'out.c'}: No such file or directory\n"
