"""solo5_sdk.py: build guests the way Solo5's own toolchain does, from the upstream hvt bindings
in ../shared/solo5-v0.12.1/sdk (its README gives the recipe). Such guests carry Solo5's start-up
code and no ukvm note: they stand for "a unikernel built by Solo5's toolchain" in tests and bench."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT.parent / "shared" / "solo5-v0.12.1"
SDK = UPSTREAM / "sdk"
SOLO5_HVT = UPSTREAM / "tenders" / "solo5-hvt"
MISSING = f"needs Solo5 v0.12.1's SDK and tender in {UPSTREAM} (present in CI, absent in a user's clone)"
NO_DEVICES = '{"type": "solo5.manifest", "version": 1, "devices": []}'


def available() -> bool:
    return (SDK / "solo5_hvt.o").exists() and SOLO5_HVT.exists()


def _run(*cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{p.stderr}")
    return p.stdout


def build(src, out: Path, manifest_json: str = NO_DEVICES, cflags=("-O2",)) -> Path:
    """Compile SRC (a file or a list of them) against Solo5's headers and link it with Solo5's
    hvt bindings into OUT."""
    sources = [src] if isinstance(src, (str, Path)) else list(src)
    work = out.parent / (out.stem + ".sdk")
    work.mkdir(parents=True, exist_ok=True)
    gcc_include = _run("gcc", "-print-file-name=include").strip()
    flags = ["-nostdinc", "-mstack-protector-guard=global", "-isystem", gcc_include, "-I", SDK / "include",
             "-ffreestanding", "-fstack-protector-strong", *cflags]
    (work / "manifest.json").write_text(manifest_json)
    _run(SDK / "solo5-elftool", "gen-manifest", work / "manifest.json", work / "manifest.c")
    objects = []
    for i, source in enumerate(sources):
        objects.append(work / f"app{i}.o")
        _run("gcc", *flags, "-c", source, "-o", objects[-1])
    _run("gcc", *flags, "-c", work / "manifest.c", "-o", work / "manifest.o")
    _run("ld", "-nostdlib", "-z", "max-page-size=0x1000", "-static", "--build-id=none", "-T",
         SDK / "solo5_hvt.lds", SDK / "solo5_hvt.o", *objects, work / "manifest.o", "-o", out)
    return out
