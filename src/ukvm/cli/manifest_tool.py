"""manifest_tool.py: `ukvm manifest gen|dump|abi`, after solo5-elftool's gen-manifest,
query-manifest and query-abi (hvt-abi.md 4.6)."""
import os
import sys
import tempfile
from pathlib import Path

from ukvm.toolchain.build import compile_manifest, gen_manifest_c
from ukvm.machine.elf import ABI_TARGETS, NOTE_MFT1, ElfFile
from ukvm.errors import ElfError, ManifestError, UkvmError
from ukvm.machine.manifest import Manifest

USAGE = """usage: ukvm manifest COMMAND ...
  gen SOURCE OUTPUT   generate the manifest note from SOURCE (JSON) as C (OUTPUT.c or -)
                      or as an object file (OUTPUT.o); SOURCE may be - for stdin
  dump BINARY         print the manifest embedded in BINARY as JSON
  abi BINARY          print the ABI note of BINARY as JSON"""


def _gen(source: str, output: str) -> None:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: Could not open: {getattr(e, 'strerror', None) or e}") from None
    name = "(stdin)" if source == "-" else source
    if output.endswith(".o"):
        compile_manifest(text, name, Path(output))
        return
    c_text = gen_manifest_c(text, name)    # validated before anything is written
    if output == "-":
        sys.stdout.write(c_text)
        return
    out = Path(output)
    if out.exists() and not out.is_file():     # e.g. /dev/null: write in place
        with open(out, "w") as f:
            f.write(c_text)
        return
    # Written to a temporary file first so that an error never leaves a partial OUTPUT.
    with tempfile.NamedTemporaryFile("w", dir=out.parent if str(out.parent) else ".", delete=False) as f:
        f.write(c_text)
    os.replace(f.name, out)


def _dump(binary: str) -> None:
    with ElfFile(binary) as elf:
        payload = elf.find_note(NOTE_MFT1)
        if payload is None:
            raise ElfError(f"{binary}: No Solo5 manifest found in executable")
        try:
            manifest = Manifest.parse(payload, binary)
        except ManifestError:
            raise ManifestError(f"{binary}: Manifest validation failed") from None
    sys.stdout.write(manifest.to_json())


def _abi(binary: str) -> None:
    with ElfFile(binary) as elf:
        abi = elf.abi()
    if abi is None:
        raise ElfError(f"{binary}: No Solo5 ABI information found in executable")
    target, version = abi
    sys.stdout.write('{\n  "type": "solo5.abi",\n'
                     f'  "target": "{ABI_TARGETS.get(target, "unknown")}",\n'
                     f'  "version": {version}\n}}\n')


def manifest_main(argv: list[str]) -> int:
    commands = {"gen": (_gen, 2), "dump": (_dump, 1), "abi": (_abi, 1)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(USAGE, file=sys.stderr)
        return 1
    fn, _ = commands[argv[0]]
    try:
        fn(*argv[1:])
    except UkvmError as e:
        print(f"ukvm manifest: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:       # writing OUTPUT (the input side reports its own errors)
        print(f"ukvm manifest: {argv[-1]}: {e.strerror}", file=sys.stderr)
        return 1
    return 0
