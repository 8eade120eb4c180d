"""manifest.py: the Solo5 application manifest: binary MFT1 payload, JSON source, generated C.

Binary layout and validation: hvt-abi.md 4.1-4.4. JSON rules and messages: 4.5-4.6.
The JSON reader is our own small parser because error messages carry the source line.
"""
import struct

from ukvm.errors import ManifestError

MFT_VERSION = 1
MFT_MAX_ENTRIES = 64
MFT_NAME_SIZE = 68
MFT_NAME_MAX = MFT_NAME_SIZE - 1
MFT_DEV_BLOCK_BASIC = 1
MFT_DEV_NET_BASIC = 2
MFT_RESERVED_FIRST = 0x40000000
TYPE_NAMES = {MFT_DEV_BLOCK_BASIC: "BLOCK_BASIC", MFT_DEV_NET_BASIC: "NET_BASIC"}

MFT_HEADER = struct.Struct("<II")
MFT_ENTRY = struct.Struct("<68sI16s8sB7s")      # name, type, u, b, attached, padding
MFT_BLOCK_BASIC = struct.Struct("<QH6x")        # u: capacity, block_size
MFT_NET_BASIC = struct.Struct("<6sH8x")         # u: mac, mtu
assert MFT_ENTRY.size == 104


class Entry:
    """One manifest entry; `u`, `b` and `attached` are filled in when a module attaches it."""
    __slots__ = ("index", "name", "type", "u", "b", "attached")

    def __init__(self, index: int, name: str, type: int, u: bytes = bytes(16), b: int = 0):
        self.index, self.name, self.type, self.u, self.b = index, name, type, u, b
        self.attached = False

    def set_block(self, capacity: int, block_size: int, host_fd: int) -> None:
        self.u = MFT_BLOCK_BASIC.pack(capacity, block_size)
        self.b = host_fd
        self.attached = True

    def set_net(self, mac: bytes, mtu: int, host_fd: int) -> None:
        self.u = MFT_NET_BASIC.pack(mac, mtu)
        self.b = host_fd
        self.attached = True


class Manifest:
    def __init__(self, entries: list[Entry]):
        self.entries = entries

    @classmethod
    def parse(cls, payload: bytes, what: str) -> "Manifest":
        """Validate an untrusted MFT1 payload; `what` prefixes the error (usually the file name)."""
        invalid = ManifestError(f"{what}: Solo5 manifest is invalid")
        if len(payload) < MFT_HEADER.size:
            raise invalid
        version, count = MFT_HEADER.unpack_from(payload)
        if (version != MFT_VERSION or count > MFT_MAX_ENTRIES
                or len(payload) != MFT_HEADER.size + MFT_ENTRY.size * count or count < 1):
            raise invalid
        entries = []
        for i in range(count):
            name, typ, u, b, attached, _pad = MFT_ENTRY.unpack_from(payload, MFT_HEADER.size + i * MFT_ENTRY.size)
            if name[MFT_NAME_MAX] != 0 or attached != 0:
                raise invalid
            entries.append(Entry(i, name.split(b"\0", 1)[0].decode("latin-1"), typ, u,
                                 int.from_bytes(b, "little")))
        if entries[0].type != MFT_RESERVED_FIRST or entries[0].name:
            raise invalid
        return cls(entries)

    def find(self, name: str, typ: int) -> Entry | None:
        """Lookup by exact name and type; with duplicate names the first match wins."""
        for entry in self.entries:
            if entry.type == typ and entry.name == name:
                return entry
        return None

    def devices(self) -> list[Entry]:
        """User entries (types below RESERVED_FIRST), i.e. those that must be attached."""
        return [e for e in self.entries if e.type < MFT_RESERVED_FIRST]

    def pack(self) -> bytes:
        """The guest's copy: entries with their attached properties filled in."""
        out = bytearray(MFT_HEADER.pack(MFT_VERSION, len(self.entries)))
        for e in self.entries:
            out += MFT_ENTRY.pack(e.name.encode("latin-1"), e.type, e.u, (e.b & (2**64 - 1)).to_bytes(8, "little"),
                                  int(e.attached), bytes(7))
        return bytes(out)

    def to_json(self) -> str:
        """solo5-elftool query-manifest format (reserved entries omitted)."""
        lines = ["{", '  "type": "solo5.manifest",', '  "version": 1,', '  "devices": [']
        devs = [e for e in self.entries if e.type < MFT_RESERVED_FIRST]
        for i, e in enumerate(devs):
            comma = "," if i < len(devs) - 1 else ""
            lines.append(f'    {{ "name": "{e.name}", "type": "{TYPE_NAMES.get(e.type, "<undefined type>")}" }}{comma}')
        lines += ["  ]", "}"]
        return "\n".join(lines) + "\n"


def type_name(typ: int) -> str:
    return TYPE_NAMES.get(typ, "<undefined type>")


# --- JSON source ----------------------------------------------------------------------------------
class _JsonSyntaxError(Exception):
    pass


class JValue:
    __slots__ = ("kind", "value", "line")

    def __init__(self, kind: str, value, line: int):
        self.kind = kind      # NULL BOOLEAN STRING ARRAY OBJECT INTEGER REAL
        self.value = value
        self.line = line


class _JsonReader:
    """Minimal JSON parser that remembers the line where each value starts."""

    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line = 1

    def _ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            if self.s[self.i] == "\n":
                self.line += 1
            self.i += 1

    def _peek(self) -> str:
        self._ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise _JsonSyntaxError
        self.i += 1

    def document(self) -> JValue:
        v = self.value()
        if self._peek():
            raise _JsonSyntaxError
        return v

    def value(self) -> JValue:
        ch = self._peek()
        line = self.line
        if ch == "{":
            self.i += 1
            pairs = []
            if self._peek() == "}":
                self.i += 1
                return JValue("OBJECT", pairs, line)
            while True:
                if self._peek() != '"':
                    raise _JsonSyntaxError
                key = self._string()
                self._expect(":")
                pairs.append((key, self.value()))
                if self._peek() == ",":
                    self.i += 1
                    continue
                self._expect("}")
                return JValue("OBJECT", pairs, line)
        if ch == "[":
            self.i += 1
            items = []
            if self._peek() == "]":
                self.i += 1
                return JValue("ARRAY", items, line)
            while True:
                items.append(self.value())
                if self._peek() == ",":
                    self.i += 1
                    continue
                self._expect("]")
                return JValue("ARRAY", items, line)
        if ch == '"':
            return JValue("STRING", self._string(), line)
        for word, kind, val in (("true", "BOOLEAN", True), ("false", "BOOLEAN", False), ("null", "NULL", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return JValue(kind, val, line)
        return self._number(line)

    def _string(self) -> str:
        self.i += 1
        out = []
        escapes = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                e = self.s[self.i:self.i + 1]
                self.i += 1
                if e in escapes:
                    out.append(escapes[e])
                elif e == "u" and all(h in "0123456789abcdefABCDEF" for h in self.s[self.i:self.i + 4]) \
                        and len(self.s[self.i:self.i + 4]) == 4:
                    out.append(chr(int(self.s[self.i:self.i + 4], 16)))
                    self.i += 4
                else:
                    raise _JsonSyntaxError
            elif c < " ":
                raise _JsonSyntaxError
            else:
                out.append(c)
        raise _JsonSyntaxError

    def _number(self, line: int) -> JValue:
        start = self.i
        s = self.s
        if self.i < len(s) and s[self.i] == "-":
            self.i += 1
        digits = self.i
        while self.i < len(s) and s[self.i].isdigit():
            self.i += 1
        if self.i == digits or (s[digits] == "0" and self.i - digits > 1):
            raise _JsonSyntaxError
        real = False
        if self.i < len(s) and s[self.i] == ".":
            real = True
            self.i += 1
            frac = self.i
            while self.i < len(s) and s[self.i].isdigit():
                self.i += 1
            if self.i == frac:
                raise _JsonSyntaxError
        if self.i < len(s) and s[self.i] in "eE":
            real = True
            self.i += 1
            if self.i < len(s) and s[self.i] in "+-":
                self.i += 1
            exp = self.i
            while self.i < len(s) and s[self.i].isdigit():
                self.i += 1
            if self.i == exp:
                raise _JsonSyntaxError
        text = s[start:self.i]
        return JValue("REAL", float(text), line) if real else JValue("INTEGER", int(text), line)


class DeviceSpec:
    __slots__ = ("name", "type")

    def __init__(self, name: str, type: int):
        self.name, self.type = name, type


def parse_json(text: str, source: str) -> list[DeviceSpec]:
    """Validate a manifest.json; errors read `SOURCE:LINE: message` as solo5-elftool's do."""
    try:
        root = _JsonReader(text).document()
    except (_JsonSyntaxError, IndexError, ValueError, RecursionError):
        raise ManifestError(f"{source}: JSON parse error") from None

    def fail(v: JValue, msg: str) -> ManifestError:
        return ManifestError(f"{source}:{v.line}: {msg}")

    if root.kind != "OBJECT":
        raise fail(root, f"(root): expected OBJECT, got {root.kind}")
    expected = {"type": "STRING", "version": "INTEGER", "devices": "ARRAY"}
    keys: dict[str, JValue] = {}
    for key, v in root.value:
        if key not in expected:
            raise fail(v, f"(root): unknown key: {key}")
        if v.kind != expected[key]:
            raise fail(v, f".{key}: expected {expected[key]}, got {v.kind}")
        if key == "devices":
            for d in v.value:
                if d.kind != "OBJECT":
                    raise fail(d, f".devices[]: expected OBJECT, got {d.kind}")
        keys[key] = v
    for key in ("type", "version"):
        if key not in keys:
            raise fail(root, f"missing .{key}")
    if "devices" not in keys:
        raise fail(root, "missing .devices[]")
    if keys["type"].value != "solo5.manifest":
        raise fail(keys["type"], '.type: invalid value, expected "solo5.manifest"')
    if keys["version"].value != MFT_VERSION:
        raise fail(keys["version"], f".version: invalid version {keys['version'].value}, expected 1")
    devs = keys["devices"]
    if len(devs.value) > MFT_MAX_ENTRIES - 1:
        raise fail(devs, f".devices[]: too many entries, maximum {MFT_MAX_ENTRIES - 1}")
    out: list[DeviceSpec] = []
    seen = set()
    for d in devs.value:
        fields = {}
        for key, v in d.value:
            if key not in ("name", "type"):
                raise fail(v, f".devices[...]: unknown key: {key}")
            if v.kind != "STRING":
                raise fail(v, f".devices[...]: .{key}: expected STRING, got {v.kind}")
            fields[key] = v
        if "name" not in fields:
            raise fail(d, ".devices[...]: missing .name")
        name = fields["name"].value
        if not name:
            raise fail(fields["name"], ".devices[...]: .name may not be empty")
        if len(name) > MFT_NAME_MAX:
            raise fail(fields["name"], ".devices[...]: name too long")
        if not (name.isascii() and name.isalnum()):
            raise fail(fields["name"], ".devices[...]: name is not alphanumeric")
        if "type" not in fields:
            raise fail(d, ".devices[...]: missing .type")
        tname = fields["type"].value
        typ = {v: k for k, v in TYPE_NAMES.items()}.get(tname)
        if typ is None:
            raise fail(fields["type"], f".devices[...]: unknown type: {tname}")
        if name in seen:
            raise fail(fields["name"], f".devices[...]: duplicate name: {name}")
        seen.add(name)
        out.append(DeviceSpec(name, typ))
    return out


def generate_c(devices: list[DeviceSpec], source: str, tool: str) -> str:
    """C source of the MFT1 note for `devices` (entry 0 reserved, the rest in JSON order)."""
    lines = [f"/* Generated by {tool} from {source}. Do not edit. */",
             f"#define MFT_ENTRIES {len(devices) + 1}",
             "#include <mft_abi.h>",
             "",
             "MFT1_NOTE_BEGIN",
             "    MFT1_ENTRY_RESERVED,"]
    for d in devices:
        lines.append(f'    MFT1_ENTRY("{d.name}", {"MFT_DEV_" + TYPE_NAMES[d.type]}),')
    lines.append("MFT1_NOTE_END")
    return "\n".join(lines) + "\n"
