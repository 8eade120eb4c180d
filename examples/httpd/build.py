#!/usr/bin/env python3
"""Build the lwIP HTTP server example into a unikernel: `python3 examples/httpd/build.py -o httpd.hvt`.

lwIP itself is not in this repository: its source comes from Debian's `lwip` source package
(2.1.3), fetched once with `apt-get source lwip` into ukvm's cache directory. That needs a
deb-src entry in the apt sources and dpkg-dev (README.md, "The lwIP example"). `--lwip DIR`
uses an lwIP tree you already have instead.
"""
import argparse
import glob
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LWIP_CORE = ["init.c", "def.c", "inet_chksum.c", "ip.c", "mem.c", "memp.c", "netif.c", "pbuf.c",
             "sys.c", "tcp.c", "tcp_in.c", "tcp_out.c", "timeouts.c"]
LWIP_IPV4 = ["etharp.c", "icmp.c", "ip4.c", "ip4_addr.c", "ip4_frag.c"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ukvm" / "lwip"


def fetch_lwip() -> Path:
    """The lwIP source tree from Debian's source package, fetched on first use."""
    root = cache_root()
    found = sorted(glob.glob(str(root / "lwip-*" / "src" / "core" / "init.c")))
    if found:
        return Path(found[-1]).parents[2]
    root.mkdir(parents=True, exist_ok=True)
    print(f"fetching lwIP's source with apt-get source lwip into {root}", file=sys.stderr)
    p = subprocess.run(["apt-get", "source", "-qq", "lwip"], cwd=root, capture_output=True, text=True)
    found = sorted(glob.glob(str(root / "lwip-*" / "src" / "core" / "init.c")))
    if p.returncode != 0 or not found:
        detail = (p.stderr.strip().splitlines() or ["no source tree appeared"])[-1]
        sys.exit(f"build.py: apt-get source lwip failed: {detail}\n"
                 "  It needs a deb-src entry in apt's sources (then apt-get update) and dpkg-dev;\n"
                 "  see README.md, 'The lwIP example'. Or pass --lwip DIR.")
    return Path(found[-1]).parents[2]


def sources(lwip: Path, solo5_toolchain: bool = False) -> list[Path]:
    """The C files of the example; with Solo5's toolchain, which brings no C library, also the
    ukvm runtime's C library fallbacks (`ukvm build` links those by itself)."""
    src = lwip / "src"
    files = ([HERE / "httpd.c", HERE / "libc.c"] + [src / "core" / f for f in LWIP_CORE]
             + [src / "core" / "ipv4" / f for f in LWIP_IPV4] + [src / "netif" / "ethernet.c"])
    if solo5_toolchain:
        from ukvm.toolchain.build import RUNTIME_DIR
        files += sorted((RUNTIME_DIR / "libc").glob("*.c"))
    return files


def include_flags(lwip: Path) -> list[str]:
    return ["-I", str(HERE / "include"), "-I", str(lwip / "src" / "include")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="httpd.hvt")
    ap.add_argument("--lwip", help="an lwIP 2.1 source tree (default: Debian's, fetched)")
    ap.add_argument("--cpl0", action="store_true", help="passed to ukvm build")
    args = ap.parse_args()
    lwip = Path(args.lwip) if args.lwip else fetch_lwip()
    if not (lwip / "src" / "core" / "init.c").exists():
        sys.exit(f"build.py: {lwip} is not an lwIP source tree")
    cflags = " ".join(["-O2", "-g", "-fno-tree-loop-distribute-patterns"] + include_flags(lwip)
                      + (["-mgeneral-regs-only"] if args.cpl0 else []))
    cmd = [sys.executable, "-m", "ukvm", "build", *map(str, sources(lwip)),
           "--manifest", str(HERE / "manifest.json"), f"--cflags={cflags}", "-o", args.output]
    if args.cpl0:
        cmd.append("--cpl0")
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
