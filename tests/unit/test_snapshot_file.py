"""Snapshot files (snapshot.py) without KVM: round trip, and every corruption is one SnapshotError."""
import ctypes
import json
import os
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from elfgen import manifest_payload
from ukvm import hvt_abi as hvt
from ukvm.kvm import abi
from ukvm.machine.manifest import MFT_DEV_NET_BASIC
from ukvm.machine.snapshot import HEADER, Snapshot, SnapshotError, VcpuState, data_ranges
from ukvm.machine.clone import bitmap_runs

SIZE = 2 << 20


def make_snapshot(ring: bool = False) -> Snapshot:
    fd = os.memfd_create("t")
    size = SIZE + (hvt.HVT_RING_AREA if ring else 0)
    os.ftruncate(fd, size)
    os.pwrite(fd, b"guest text", 0x100000)
    os.pwrite(fd, b"\x01" * 4096, 0x1FF000)
    vcpu = VcpuState(bytes(range(ctypes.sizeof(abi.kvm_regs))), bytes(ctypes.sizeof(abi.kvm_sregs)),
                     bytes(ctypes.sizeof(abi.kvm_xsave)), bytes(ctypes.sizeof(abi.kvm_xcrs)),
                     {0xC0000100: 0x1234, 0x277: 7}, 99)
    return Snapshot(fd, 0, size, SIZE, {"readonly": [(0x100000, 0x101000)], "noaccess": [(0, 0x1000)]}, vcpu,
                    hvt.HVT_FEATURE_RING_IO if ring else 0, SIZE if ring else 0, 3, False,
                    manifest_payload(("service0", MFT_DEV_NET_BASIC)), {"net": {"service0": {"mac": "02:00:00:00:00:01", "mtu": 1500}}},
                    "app.hvt")


def test_round_trip(tmp_path):
    snap = make_snapshot(ring=True)
    path = tmp_path / "s.snap"
    snap.save(str(path))
    got = Snapshot.load(str(path))
    try:
        for field in ("size", "limit", "protections", "host_features", "ring_gpa", "guest_cpl", "supervised",
                      "manifest_payload", "modules", "kernel"):
            assert getattr(got, field) == getattr(snap, field), field
        assert got.vcpu == snap.vcpu
        assert got.mem_offset % 4096 == 0
        assert os.pread(got.mem_fd, 10, got.mem_offset + 0x100000) == b"guest text"
        assert os.pread(got.mem_fd, 4096, got.mem_offset + 0x1FF000) == b"\x01" * 4096
        # Sparse: only the pages that hold data take space.
        assert sum(e - s for s, e in data_ranges(got.mem_fd, got.mem_offset, got.size)) <= 2 * 4096
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        got.close()
        snap.close()


def rewrite(path, meta_edit=None, header_edit=None):
    """Rewrite a snapshot file's metadata (CRC kept right) or header fields."""
    raw = bytearray(open(path, "rb").read())
    magic, version, meta_len, crc, res, mem_offset, size = HEADER.unpack_from(raw)
    meta = json.loads(raw[HEADER.size:HEADER.size + meta_len])
    if meta_edit:
        meta_edit(meta)
        new = json.dumps(meta).encode()
        assert HEADER.size + len(new) <= mem_offset
        raw[HEADER.size:mem_offset] = new + bytes(mem_offset - HEADER.size - len(new))
        meta_len, crc = len(new), zlib.crc32(new)
    fields = dict(magic=magic, version=version, meta_len=meta_len, crc=crc, mem_offset=mem_offset, size=size)
    if header_edit:
        header_edit(fields)
    HEADER.pack_into(raw, 0, fields["magic"], fields["version"], fields["meta_len"], fields["crc"], 0,
                     fields["mem_offset"], fields["size"])
    open(path, "wb").write(raw)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


CORRUPTIONS = [
    ("bad magic", None, lambda h: h.update(magic=b"NOTASNAP")),
    ("version 2", None, lambda h: h.update(version=2)),
    ("metadata length", None, lambda h: h.update(meta_len=1 << 21)),
    ("memory offset", None, lambda h: h.update(mem_offset=4097)),
    ("bad memory size", None, lambda h: h.update(size=12345)),
    ("truncated", None, lambda h: h.update(size=64 << 20)),
    ("checksum mismatch", None, lambda h: h.update(crc=h["crc"] ^ 1)),
    ("does not match the header", _set("size", 8 << 20), None),
    ("bad memory limit", _set("limit", SIZE + 4096 * 1024), None),
    ("bad readonly range", lambda m: m["protections"].__setitem__("readonly", [[0, SIZE * 2]]), None),
    ("bad noaccess range", lambda m: m["protections"].__setitem__("noaccess", [[1, 4096]]), None),
    ("unknown host features", _set("host_features", 4), None),
    ("bad ring address", _set("ring_gpa", 4096), None),
    ("bad guest CPL", _set("guest_cpl", 1), None),
    ("'manifest' is not hex", _set("manifest", "zz"), None),
    ("manifest:", _set("manifest", "00" * 8), None),
    ("'regs' has 3 bytes", lambda m: m["vcpu"].__setitem__("regs", "000102"), None),
    ("vcpu.fpu has", lambda m: m["vcpu"].__setitem__("fpu", "00"), None),
    ("vcpu.msrs: unexpected entry", lambda m: m["vcpu"]["msrs"].__setitem__("0x10", 5), None),
    ("vcpu.msrs: unexpected entry", lambda m: m["vcpu"]["msrs"].__setitem__("0xc0000100", -1), None),
    ("'tsc' missing or not int", lambda m: m["vcpu"].__setitem__("tsc", "1"), None),
    ("'modules' missing", lambda m: m.pop("modules"), None),
    ("'supervised' missing or not bool", _set("supervised", 1), None),
]


@pytest.mark.parametrize("message, meta_edit, header_edit", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_files_are_one_line(tmp_path, message, meta_edit, header_edit):
    snap = make_snapshot(ring=True)
    path = tmp_path / "s.snap"
    snap.save(str(path))
    snap.close()
    rewrite(path, meta_edit, header_edit)
    with pytest.raises(SnapshotError) as e:
        Snapshot.load(str(path)).close()
    text = str(e.value)
    assert text.startswith(f"{path}: invalid snapshot: ") and message in text and "\n" not in text, text


def test_missing_and_short_files(tmp_path):
    with pytest.raises(SnapshotError, match="No such file"):
        Snapshot.load(str(tmp_path / "absent"))
    (tmp_path / "short").write_bytes(b"UKVMSNAP")
    with pytest.raises(SnapshotError, match="file too short"):
        Snapshot.load(str(tmp_path / "short"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_damage_is_refused_or_harmless(tmp_path_factory, flips):
    path = tmp_path_factory.mktemp("fuzz") / "s.snap"
    snap = make_snapshot()
    snap.save(str(path))
    snap.close()
    raw = bytearray(open(path, "rb").read(4096))
    for at, value in flips:
        raw[at] = value
    with open(path, "r+b") as f:
        f.write(raw)
    try:
        Snapshot.load(str(path)).close()
    except SnapshotError as e:
        assert "\n" not in str(e)


# --- the metadata fuzzed behind a recomputed CRC ----------------------------------------------------
# Random damage to a file is almost always stopped by the CRC; here the JSON metadata is changed
# in place (a value replaced, a key dropped or added, a number nudged) and the CRC recomputed, so
# every field's validation is what answers.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from([0, 1, -1, 3, 4096, SIZE, 2**63, 2**64, -(2**64)])
    | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["", "00", "zz", "0x10", "0xc0000100", "02:00:00:00:00:01"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def json_paths(value, path=()):
    """Every place in a JSON document: the paths to each dict entry and list item."""
    out = [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out += json_paths(child, path + (key,))
    return out


@st.composite
def metadata_edits(draw, meta):
    """One edit of `meta` (a function applying it) drawn from every place in the document."""
    paths = [p for p in json_paths(meta) if p]
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["replace", "delete", "nudge", "add"]))
    new = draw(JSON_VALUES)
    delta = draw(st.sampled_from([-4096, -1, 1, 4096, 1 << 32]))

    def edit(doc):
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "nudge" and type(parent[key]) is int:
            parent[key] += delta
        elif kind == "add" and isinstance(parent[key], dict):
            parent[key]["extra"] = new
        elif kind == "add" and isinstance(parent[key], list):
            parent[key].append(new)
        else:
            parent[key] = new
    edit.description = f"{kind} {path} ({new!r}, {delta})"
    return edit


def snapshot_metadata(path) -> dict:
    raw = open(path, "rb").read()
    meta_len = HEADER.unpack_from(raw)[2]
    return json.loads(raw[HEADER.size:HEADER.size + meta_len])


def load_edited(path, edit):
    """Load the file at `path` after `edit` of its metadata (CRC recomputed): the Snapshot, or
    None after a one-line SnapshotError; anything else fails the test."""
    rewrite(path, edit)
    try:
        return Snapshot.load(str(path))
    except SnapshotError as e:
        text = str(e)
        assert text.startswith(f"{path}: invalid snapshot: ") and "\n" not in text, (edit.description, text)
        return None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_metadata_fuzzed_behind_a_good_crc(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("meta") / "s.snap"
    snap = make_snapshot(ring=data.draw(st.booleans()))
    snap.save(str(path))
    snap.close()
    edit = data.draw(metadata_edits(snapshot_metadata(path)))
    got = load_edited(path, edit)
    if got is None:
        return
    try:        # accepted: what was loaded is consistent, and saves and loads back the same
        assert 0 < got.limit <= got.size and got.guest_cpl in (0, 3), edit.description
        assert all(0 <= s < e <= got.limit for ranges in got.protections.values() for s, e in ranges)
        again = path.with_suffix(".again")
        got.save(str(again))
        back = Snapshot.load(str(again))
        try:
            for field in ("size", "limit", "protections", "host_features", "ring_gpa", "guest_cpl", "supervised",
                          "manifest_payload", "modules", "vcpu"):
                assert getattr(back, field) == getattr(got, field), (field, edit.description)
        finally:
            back.close()
    finally:
        got.close()


def test_dirty_bitmap_decoding():
    bitmap = bytearray(16 * 1024)
    for page in (0, 1, 2, 63, 64, 4000, 131071):
        bitmap[page // 8] |= 1 << (page % 8)
    assert list(bitmap_runs(bytes(bitmap))) == [0, 3, 63, 65, 4000, 4001, 131071, 131072]
    assert list(bitmap_runs(bytes(100))) == []


def test_tender_writes_are_remembered_by_page():
    from ukvm import hvt_abi as hvt2
    from ukvm.machine.memory import TrackedGuestMemory
    mem = TrackedGuestMemory(2 << 20)
    try:
        mem.pack(hvt2.U32, 0x10FFE, 7)                      # crosses into the next page
        with mem.writable_view(0x20000, 3 * 4096):
            pass
        mem.pack(hvt2.U32, 0x10000, 1)
        assert mem.host_dirty == {0x10, 0x11, 0x20, 0x21, 0x22}
    finally:
        mem.close()


def test_what_is_not_a_regular_file_is_one_line(tmp_path):
    """A directory or FIFO named by --restore, or a pipe handed back by a confined boot
    (from_fd): SnapshotError, never a traceback or a hang on the FIFO's open."""
    with pytest.raises(SnapshotError, match="not a regular file"):
        Snapshot.load(str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SnapshotError, match="not a regular file"):
        Snapshot.load(str(tmp_path / "fifo"))
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(SnapshotError, match="^a boot: invalid snapshot: not a regular file$"):
        Snapshot.from_fd(r, "a boot")
    with pytest.raises(OSError):
        os.fstat(r)                       # from_fd took the descriptor and closed it
