"""build.py: `ukvm build`: compile and link unikernels against the ukvm runtime with gcc/binutils.

The runtime is compiled on first use into a cache directory keyed by a hash of its sources and
the compiler version, as one relocatable object whose only global symbols are the Solo5 API
(so applications may define their own memcpy or printf), plus a small archive of C library
fallbacks that the linker pulls in only for symbols the application leaves undefined.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ukvm import __version__
from ukvm.toolchain.cache import cache_dir
from ukvm.errors import UkvmError
from ukvm.machine.elf import UKVM_MODE_CPL3, UKVM_MODE_DEBUG
from ukvm.machine.manifest import generate_c, parse_json

RUNTIME_DIR = Path(__file__).parent.parent / "runtime"
INCLUDE_DIR = RUNTIME_DIR / "include"
LINKER_SCRIPT = RUNTIME_DIR / "hvt.lds"
RUNTIME_OBJ = "ukvm_hvt.o"
LIBC_ARCHIVE = "libukvmc.a"

# Runtime code runs at CPL0, where this host's KVM (kvm_pvm) cannot execute x87/SSE/AVX, and it
# never saves vector state: general registers only.
RUNTIME_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-mgeneral-regs-only",
                  "-mno-red-zone", "-fno-stack-protector", "-fno-builtin",
                  "-fno-tree-loop-distribute-patterns"]    # unwind tables kept: gdb walks core dumps
APP_DEFAULT_CFLAGS = ["-O2", "-g"]
EXPORTED = ["solo5_*", "_start*", "__stack_chk_guard", "__stack_chk_fail"]


class BuildError(UkvmError):
    pass


def run_tool(cmd: list[str]) -> str:
    """Run a toolchain command; its stdout, or BuildError with the command's own error output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]}: command not found (install gcc and binutils)") from None
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def compiler() -> str:
    return os.environ.get("CC", "gcc")


_gcc_include: dict[str, str] = {}


def base_cflags() -> list[str]:
    """Freestanding flags shared by the runtime and applications."""
    cc = compiler()
    if cc not in _gcc_include:       # the compiler's own freestanding headers, asked once
        _gcc_include[cc] = run_tool([cc, "-print-file-name=include"]).strip()
    return ["-nostdinc", "-isystem", _gcc_include[cc], "-I", str(INCLUDE_DIR), "-ffreestanding",
            "-fno-pie", "-mstack-protector-guard=global", "-m64"]


def runtime_dir() -> Path:
    """Directory holding the built runtime object and libc archive; built if missing."""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(RUNTIME_DIR.rglob("*")):
        if path.is_file() and path.parent.name != "supervisor":   # built with the package
            h.update(str(path.relative_to(RUNTIME_DIR)).encode())
            h.update(path.read_bytes())
    h.update(run_tool([compiler(), "--version"]).encode())
    h.update(" ".join(RUNTIME_CFLAGS).encode())
    out = Path(cache_dir()) / f"runtime-{h.hexdigest()[:16]}"
    if (out / RUNTIME_OBJ).exists() and (out / LIBC_ARCHIVE).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmpdir = Path(tmp)
        flags = base_cflags() + RUNTIME_CFLAGS
        objs = []
        for src in sorted((RUNTIME_DIR / "src").glob("*.[cS]")):
            obj = tmpdir / (src.stem + ".o")
            run_tool([compiler(), *flags, "-c", str(src), "-o", str(obj)])
            objs.append(str(obj))
        combined = tmpdir / "combined.o"
        run_tool(["ld", "-r", "-o", str(combined), *objs])
        keep = [arg for sym in EXPORTED for arg in ("--keep-global-symbol", sym)]
        run_tool(["objcopy", "--wildcard", *keep, str(combined), str(tmpdir / RUNTIME_OBJ)])
        libc_objs = []
        for src in sorted((RUNTIME_DIR / "libc").glob("*.c")):
            obj = tmpdir / ("libc_" + src.stem + ".o")
            run_tool([compiler(), *flags, "-c", str(src), "-o", str(obj)])
            libc_objs.append(str(obj))
        run_tool(["ar", "rcs", str(tmpdir / LIBC_ARCHIVE), *libc_objs])
        final = tmpdir / "final"
        final.mkdir()
        for name in (RUNTIME_OBJ, LIBC_ARCHIVE):
            os.replace(tmpdir / name, final / name)
        try:
            os.rename(final, out)
        except OSError:
            if not (out / RUNTIME_OBJ).exists():   # lost a race with another build: fine
                raise
    return out


def gen_manifest_c(manifest_json: str, source_name: str) -> str:
    return generate_c(parse_json(manifest_json, source_name), source_name, f"ukvm {__version__}")


def compile_manifest(manifest_json: str, source_name: str, out_obj: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c_file = Path(tmp) / "manifest.c"
        c_file.write_text(gen_manifest_c(manifest_json, source_name))
        run_tool([compiler(), *base_cflags(), "-c", str(c_file), "-o", str(out_obj)])


def build(sources: list[str], output: str, manifest: str | None = None,
          cflags: list[str] | None = None, cpl0: bool = False) -> None:
    """Compile C/assembly sources (or directories of them) and link APP.hvt.

    By default the image asks a ukvm tender to run it at CPL3 (docs/cpl3.md); `cpl0` builds a
    classic image that runs at CPL0 everywhere."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(list(p.glob("*.c")) + list(p.glob("*.S")))
            if not found:
                raise BuildError(f"{src}: no C sources in directory")
            files += found
            if manifest is None and (p / "manifest.json").exists():
                manifest = str(p / "manifest.json")
        elif p.is_file():
            files.append(p)
        else:
            raise BuildError(f"{src}: No such file or directory")
    if manifest is not None:
        try:
            manifest_text = Path(manifest).read_text()
        except OSError as e:
            raise BuildError(f"{manifest}: {e.strerror}") from None
    else:
        manifest_text = json.dumps({"type": "solo5.manifest", "version": 1, "devices": []})
        manifest = "(no manifest: no devices)"
    rt = runtime_dir()
    flags = base_cflags() + ["-fstack-protector-strong"] + APP_DEFAULT_CFLAGS + (cflags or [])
    with tempfile.TemporaryDirectory() as tmp:
        objs = []
        for i, f in enumerate(files):
            if f.suffix == ".o":
                objs.append(str(f))
                continue
            obj = Path(tmp) / f"{i}_{f.stem}.o"
            run_tool([compiler(), *flags, "-c", str(f), "-o", str(obj)])
            objs.append(str(obj))
        mft_obj = Path(tmp) / "manifest.o"
        compile_manifest(manifest_text, manifest, mft_obj)
        out_tmp = Path(tmp) / "out.hvt"
        run_tool(["ld", "-nostdlib", "-static", "-z", "max-page-size=0x1000", "-z", "noexecstack",
              "--build-id=none", f"--defsym=ukvm_mode_flags={0 if cpl0 else UKVM_MODE_CPL3 | UKVM_MODE_DEBUG}",
              "-T", str(LINKER_SCRIPT), "-o", str(out_tmp),
              str(rt / RUNTIME_OBJ), *objs, str(mft_obj), str(rt / LIBC_ARCHIVE)])
        try:
            shutil.move(str(out_tmp), output)
        except OSError as e:
            raise BuildError(f"{output}: {e.strerror}") from None


BUILD_USAGE = """usage: ukvm build SRC... -o APP.hvt [ --manifest manifest.json ] [ --cflags=FLAGS ] [ --cpl0 ]
SRC are C (.c), assembly (.S) or object (.o) files, or directories holding .c files and an
optional manifest.json. With no manifest the unikernel declares no devices.
The unikernel runs at CPL3 on ukvm (at CPL0 on tenders that do not offer it); --cpl0 makes
it run at CPL0 everywhere."""


def build_main(argv: list[str]) -> int:
    sources: list[str] = []
    output = manifest = None
    cflags: list[str] = []
    cpl0 = False
    it = iter(argv)
    try:
        for arg in it:
            if arg in ("-h", "--help"):
                print(BUILD_USAGE, file=sys.stderr)
                return 0
            if arg == "-o":
                output = next(it)
            elif arg == "--manifest":
                manifest = next(it)
            elif arg.startswith("--manifest="):
                manifest = arg.split("=", 1)[1]
            elif arg.startswith("--cflags="):
                cflags += arg.split("=", 1)[1].split()
            elif arg == "--cpl0":
                cpl0 = True
            elif arg.startswith("-"):
                print(f"ukvm build: unknown option: {arg}\n{BUILD_USAGE}", file=sys.stderr)
                return 1
            else:
                sources.append(arg)
    except StopIteration:
        print(f"ukvm build: option needs an argument\n{BUILD_USAGE}", file=sys.stderr)
        return 1
    if not sources or output is None:
        print(BUILD_USAGE, file=sys.stderr)
        return 1
    try:
        build(sources, output, manifest, cflags, cpl0)
    except UkvmError as e:
        print(f"ukvm build: {e}", file=sys.stderr)
        return 1
    return 0
