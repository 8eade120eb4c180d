"""Short property-based fuzzing of every parser of untrusted input (fuzz/targets.py): each input
is accepted or rejected with UkvmError, nothing else. The long coverage-guided runs are
documented in docs/security.md (fuzz/run_atheris.py)."""
import random
import struct
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elfgen import abi_note, make_elf, manifest_payload, mft_note

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
import targets  # noqa: E402

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_ELF = make_elf(segments=[(0x100000, b"\x90" * 64, 0x2000, 5, 0x1000), (0x200000, b"d" * 32, 0x1000, 6, 0x1000)],
                     notes=[abi_note(), mft_note(manifest_payload(("disk", 1)))])


@st.composite
def mutated(draw, base: bytes):
    """A valid input with some bytes overwritten, some cut, or some 64-bit fields set to edge values."""
    data = bytearray(base)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 8))):
        kind = rnd.randrange(3)
        pos = rnd.randrange(len(data))
        if kind == 0:
            data[pos] = rnd.randrange(256)
        elif kind == 1 and pos + 8 <= len(data):
            struct.pack_into("<Q", data, pos, rnd.choice([0, 1, 2**63, 2**64 - 1, 0x100000, 2**32 - 1]))
        else:
            del data[pos:]
            break
    return bytes(data)


@FAST
@given(st.one_of(st.binary(max_size=512), mutated(VALID_ELF)))
def test_elf_loader(data):
    targets.fuzz_elf(data)


@FAST
@given(st.one_of(st.binary(max_size=2048), mutated(manifest_payload(("a", 1), ("b", 2)))))
def test_manifest_binary(data):
    targets.fuzz_manifest_binary(data)


JSON_ALPHABET = st.sampled_from(list('{}[]:,"0123456789.-eE truefalsn\\u\n') + ["devices", "name", "type"])


@FAST
@given(st.one_of(st.binary(max_size=256), st.lists(JSON_ALPHABET, max_size=80).map(lambda t: "".join(t).encode()),
                 mutated(b'{"type": "solo5.manifest", "version": 1, "devices": [{"name": "a", "type": "NET_BASIC"}]}')))
def test_manifest_json(data):
    targets.fuzz_manifest_json(data)


@FAST
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_hypercall_arguments(nr, gpa, body):
    targets.fuzz_hypercalls(bytes([nr]) + struct.pack("<I", gpa) + body)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=32 * 16))
def test_ring_entries(data):
    targets.fuzz_ring(data)
