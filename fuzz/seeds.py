#!/usr/bin/env python3
"""seeds.py OUTDIR: write seed inputs for each fuzz target (valid images, manifests, hypercall
and ring requests) into OUTDIR/TARGET/, so that coverage-guided runs start past the first check."""
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from elfgen import abi_note, make_elf, manifest_payload, mft_note  # noqa: E402


def main(out: Path) -> None:
    seeds = {
        "elf": [make_elf(), make_elf(segments=[(0x100000, b"\x90" * 64, 0x2000, 5, 0x1000),
                                               (0x200000, b"d" * 32, 0x3000, 6, 0x1000)],
                                     notes=[abi_note(), mft_note(manifest_payload(("disk", 1), ("net", 2)))])],
        "manifest_binary": [manifest_payload(), manifest_payload(("a", 1), ("b", 2))],
        "manifest_json": [json.dumps({"type": "solo5.manifest", "version": 1, "devices": [
            {"name": "storage", "type": "BLOCK_BASIC"}, {"name": "service0", "type": "NET_BASIC"}]}, indent=2).encode()],
        "hypercalls": [bytes([nr]) + struct.pack("<I", 0x200000) + struct.pack("<QQQQ", 1, 512, 0x210000, 512)
                       for nr in range(1, 9)],
        "ring": [struct.pack("<IIQII8x", op, 1, 0x200000, 64, i) * 4 for i, op in enumerate((1, 2))],
    }
    for target, items in seeds.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (d / f"seed{i}").write_bytes(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
