"""cli: the `ukvm` command (run, build, manifest; serve and oci dispatched) and `ukvm-hvt`.

The CLI is a thin layer over the library: run.py reads solo5-hvt's command line (hvt-abi.md
section 2) with the options layer (ukvm.options), builds a VM, runs it and turns errors into
`prog: message` + exit status; manifest_tool.py is `ukvm manifest`.

A front end. May import every layer below (machine, modules, sandbox, toolchain, options);
serve and oci are imported only to dispatch their subcommands, and import nothing from here.
"""
import os
import sys

from ukvm import __version__
from ukvm import hvt_abi as hvt
from ukvm.cli.run import run_main
from ukvm.cli.collector import collect_from_now


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ukvm"
    return "ukvm" if name in ("__main__.py", "-c", "cli.py") else name


MAIN_USAGE = """usage: ukvm COMMAND ...
Commands:
  run [ OPTIONS ] [ -- ] KERNEL [ ARGS ]   run a unikernel (same options as solo5-hvt; see run --help)
  serve [ OPTIONS ] --listen=HOST:PORT --guest=IP:PORT APP.hvt [ ARGS ]
                                           a fresh VM clone per TCP connection (see serve --help)
  build SRC... -o APP.hvt [ --manifest manifest.json ] [ --cflags=FLAGS ]
                                           compile and link a unikernel against the ukvm runtime
  oci build APP.hvt -o IMAGE.tar [ --tag NAME ] [ --cmdline ARGS ] [ --block NAME=FILE ]
                                           an OCI image archive in urunc's format (docs/kubernetes.md)
  manifest gen SOURCE.json OUTPUT.c|OUTPUT.o   generate the manifest note (- for stdin/stdout)
  manifest dump APP.hvt                    print the manifest of a unikernel as JSON
  manifest abi APP.hvt                     print the ABI note of a unikernel as JSON
  --version                                print the version"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(MAIN_USAGE, file=sys.stderr)
        return 1 if not argv else 0
    cmd, rest = argv[0], argv[1:]
    if cmd != "run":
        collect_from_now()
    if cmd == "--version":
        print(f"ukvm {__version__} (hvt ABI version {hvt.HVT_ABI_VERSION})")
        return 0
    if cmd == "run":
        exit_now(run_main(rest, "ukvm"))
    if cmd == "serve":
        from ukvm.serve import serve_main
        return serve_main(rest)
    if cmd == "oci":
        from ukvm.oci.image import oci_main
        return oci_main(rest)
    if cmd == "build":
        from ukvm.toolchain.build import build_main
        return build_main(rest)
    if cmd == "manifest":
        from ukvm.cli.manifest_tool import manifest_main
        return manifest_main(rest)
    print(f"ukvm: unknown command: {cmd}\n{MAIN_USAGE}", file=sys.stderr)
    return 1


def hvt_main() -> int:
    """Entry point of `ukvm-hvt`: exactly `ukvm run`."""
    exit_now(run_main(sys.argv[1:], _prog()))


def exit_now(status: int) -> None:
    """End the tender once the run is over: everything it owns (the VM, block devices flushed and
    closed) was released by run_main, so only the standard streams need flushing. Skipping the
    interpreter's teardown of every module saves about 3.5 ms per run (docs/performance.md)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
