"""Manifest: binary validation (hvt-abi.md 4.3), JSON source rules and messages (4.5-4.6)."""
import json
import struct

import pytest

from elfgen import manifest_payload
from ukvm.errors import ManifestError
from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, Manifest, generate_c, parse_json


def test_parse_valid_and_lookup():
    m = Manifest.parse(manifest_payload(("storage", MFT_DEV_BLOCK_BASIC), ("service0", MFT_DEV_NET_BASIC)), "x")
    assert [e.name for e in m.entries] == ["", "storage", "service0"]
    assert m.find("storage", MFT_DEV_BLOCK_BASIC).index == 1
    assert m.find("storage", MFT_DEV_NET_BASIC) is None      # type must match too
    assert m.find("service0", MFT_DEV_NET_BASIC).index == 2


def test_pack_fills_attached_properties():
    m = Manifest.parse(manifest_payload(("storage", MFT_DEV_BLOCK_BASIC)), "x")
    m.entries[1].set_block(4 << 20, 4096, host_fd=7)
    raw = m.pack()
    assert len(raw) == 8 + 2 * 104
    e1 = 8 + 104
    assert struct.unpack_from("<QH", raw, e1 + 72) == (4 << 20, 4096)
    assert raw[e1 + 96] == 1 and raw[8 + 96] == 0


def _corrupt(offset, value, fmt="<I", devices=1):
    raw = bytearray(manifest_payload(*[(f"d{i}", MFT_DEV_BLOCK_BASIC) for i in range(devices)]))
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


@pytest.mark.parametrize("payload", [
    b"", b"\x01\x00\x00\x00",
    _corrupt(0, 2),                        # version
    _corrupt(4, 65),                       # too many entries
    _corrupt(4, 3),                        # size does not match the count
    _corrupt(4, 0)[:8],                    # no entries
    _corrupt(8 + 68, 1),                   # entry 0 is not RESERVED_FIRST
    _corrupt(8, 0x41, "<B"),               # entry 0 has a name
    _corrupt(8 + 104 + 67, 0x41, "<B"),    # name not terminated
    _corrupt(8 + 104 + 96, 1, "<B"),       # attached already set
])
def test_parse_rejects(payload):
    with pytest.raises(ManifestError, match="^f: Solo5 manifest is invalid$"):
        Manifest.parse(payload, "f")


def test_64_entries_is_the_limit():
    payload = manifest_payload(*[(f"s{i}", MFT_DEV_BLOCK_BASIC) for i in range(63)])
    assert len(Manifest.parse(payload, "x").entries) == 64


def doc(devices, **extra):
    d = {"type": "solo5.manifest", "version": 1, "devices": devices}
    d.update(extra)
    return json.dumps(d, indent=2)


def test_json_valid():
    devs = parse_json(doc([{"name": "storage", "type": "BLOCK_BASIC"}, {"type": "NET_BASIC", "name": "n0"}]), "m")
    assert [(d.name, d.type) for d in devs] == [("storage", 1), ("n0", 2)]


@pytest.mark.parametrize("text,message", [
    ("{", "m: JSON parse error"),
    ("[]", "m:1: (root): expected OBJECT, got ARRAY"),
    ('{"type": "solo5.manifest", "bogus": 1}', "m:1: (root): unknown key: bogus"),
    ('{"type": 1}', "m:1: .type: expected STRING, got INTEGER"),
    ('{"version": "1"}', "m:1: .version: expected INTEGER, got STRING"),
    ('{"version": 1.0}', "m:1: .version: expected INTEGER, got REAL"),
    ('{"devices": {}}', "m:1: .devices: expected ARRAY, got OBJECT"),
    ('{"devices": [null]}', "m:1: .devices[]: expected OBJECT, got NULL"),
    ('{"version": 1, "devices": []}', "m:1: missing .type"),
    ('{"type": "solo5.manifest", "devices": []}', "m:1: missing .version"),
    ('{"type": "solo5.manifest", "version": 1}', "m:1: missing .devices[]"),
    ('{"type": "x", "version": 1, "devices": []}', 'm:1: .type: invalid value, expected "solo5.manifest"'),
    ('{"type": "solo5.manifest", "version": 2, "devices": []}', "m:1: .version: invalid version 2, expected 1"),
    (doc([{"name": "a", "type": "BLOCK_BASIC", "x": 1}]), ".devices[...]: unknown key: x"),
    (doc([{"type": "BLOCK_BASIC"}]), ".devices[...]: missing .name"),
    (doc([{"name": "", "type": "BLOCK_BASIC"}]), ".devices[...]: .name may not be empty"),
    (doc([{"name": "a" * 68, "type": "BLOCK_BASIC"}]), ".devices[...]: name too long"),
    (doc([{"name": "a-b", "type": "BLOCK_BASIC"}]), ".devices[...]: name is not alphanumeric"),
    (doc([{"name": "ab"}]), ".devices[...]: missing .type"),
    (doc([{"name": "ab", "type": "SERIAL"}]), ".devices[...]: unknown type: SERIAL"),
    (doc([{"name": "ab", "type": "NET_BASIC"}, {"name": "ab", "type": "BLOCK_BASIC"}]),
     ".devices[...]: duplicate name: ab"),
])
def test_json_errors(text, message):
    with pytest.raises(ManifestError) as e:
        parse_json(text, "m")
    assert message in str(e.value)


def test_json_too_many_entries_reports_the_devices_line():
    text = doc([{"name": f"storage{i}", "type": "BLOCK_BASIC"} for i in range(1, 65)])
    with pytest.raises(ManifestError) as e:
        parse_json(text, "manifest.json")
    assert str(e.value) == "manifest.json:4: .devices[]: too many entries, maximum 63"


def test_json_63_devices_is_fine():
    assert len(parse_json(doc([{"name": f"s{i}", "type": "BLOCK_BASIC"} for i in range(63)]), "m")) == 63


def test_generated_c_lists_entries_in_order():
    c = generate_c(parse_json(doc([{"name": "b", "type": "BLOCK_BASIC"}, {"name": "a", "type": "NET_BASIC"}]),
                              "m"), "m", "ukvm test")
    assert "#define MFT_ENTRIES 3" in c
    assert c.index("MFT1_ENTRY_RESERVED") < c.index('"b", MFT_DEV_BLOCK_BASIC') < c.index('"a", MFT_DEV_NET_BASIC')


def test_dump_json_format():
    m = Manifest.parse(manifest_payload(("service0", MFT_DEV_NET_BASIC), ("service1", MFT_DEV_NET_BASIC)), "x")
    assert m.to_json() == ('{\n  "type": "solo5.manifest",\n  "version": 1,\n  "devices": [\n'
                           '    { "name": "service0", "type": "NET_BASIC" },\n'
                           '    { "name": "service1", "type": "NET_BASIC" }\n  ]\n}\n')
    assert Manifest.parse(manifest_payload(), "x").to_json().endswith('"devices": [\n  ]\n}\n')
