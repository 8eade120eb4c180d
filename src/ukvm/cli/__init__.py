"""cli: the `ukvm` command (run, build, manifest) and `ukvm-hvt`, a drop-in for solo5-hvt.

The CLI is a thin layer over the library: it parses arguments the way solo5-hvt does
(hvt-abi.md section 2), builds a VM, runs it and turns errors into `prog: message` + exit status.

A front end. May import every layer below (machine, modules, sandbox, toolchain); serve and oci
are imported only to dispatch their subcommands.
"""
import _signal as signal  # the C module behind `signal`, without its enum import
import os
import sys

from ukvm import __version__
from ukvm import hvt_abi as hvt
from ukvm.errors import SignalExit, UkvmError, UsageError
from ukvm.modules import default_modules, module_classes
from ukvm.sandbox import sandbox_vm
from ukvm.units import parse_mem
from ukvm.machine.vm import GUEST_CPL_CHOICES, VM, Kernel


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ukvm"
    return "ukvm" if name in ("__main__.py", "-c", "cli.py") else name


def run_usage(prog: str) -> str:
    lines = [
        f"usage: {prog} [ CORE OPTIONS ] [ MODULE OPTIONS ] [ -- ] KERNEL [ ARGS ]",
        "KERNEL is the filename of the unikernel to run.",
        "ARGS are passed verbatim to the unikernel.",
        "Core options:",
        "  [ --mem=512 ] (guest memory in MB)",
        "    --help (display this help)",
        "    --version (display version information)",
        "    --x-no-sandbox (debugging: do not confine the tender with seccomp)",
        "    --stats (print each hypercall's count and handler time at exit)",
        "    --snapshot-at=ready --snapshot=FILE (run until the guest first waits with no input",
        "      pending, write its snapshot to FILE and exit 0; not confined by seccomp)",
        "    --restore=FILE (go on from a snapshot instead of KERNEL; attach the same devices)",
        "    --x-guest-cpl=auto|0|3 (privilege level of the guest's code; auto: 3 for guests built by",
        "      ukvm build, and for other guests under ukvm's supervisor where the host emulates CPL0)",
        "Compiled-in modules: " + "".join(cls.name + " " for cls in module_classes()),
    ]
    lines += [cls.usage for cls in module_classes() if cls.usage]
    return "\n".join(lines)


def _test_hook_open_after_sandbox(vm) -> None:
    """Test-only: with UKVM_TEST_OPEN_AFTER_SANDBOX=PATH set, the first PUTS opens PATH, which the
    sandbox must answer by killing the tender (tests/integration/test_sandbox.py)."""
    path = os.environ.get("UKVM_TEST_OPEN_AFTER_SANDBOX")
    if not path:
        return
    puts = vm.hypercalls.handlers[hvt.HVT_HYPERCALL_PUTS]

    def opening_puts(gpa):
        os.close(os.open(path, os.O_RDONLY))
        puts(gpa)
    vm.hypercalls.handlers[hvt.HVT_HYPERCALL_PUTS] = opening_puts


def _signal_exit(signum, _frame):
    raise SignalExit(signum)


URUNC_NET_NAMES = ("service", "tap")     # the NIC names urunc gives (MirageOS, Rumprun)


def urunc_device_names(options: list[str], manifest) -> list[str]:
    """urunc names the NIC `service` or `tap` whatever the unikernel declared: when that name is
    not declared and the manifest has exactly one NET_BASIC device, the option means that one
    (docs/kubernetes.md). Anything else is left for the modules to accept or refuse."""
    from ukvm.machine.manifest import MFT_DEV_NET_BASIC
    nics = [e.name for e in manifest.devices() if e.type == MFT_DEV_NET_BASIC]
    out = []
    for arg in options:
        for opt in ("--net:", "--net-mac:"):
            name = arg[len(opt):].partition("=")[0] if arg.startswith(opt) else None
            if name in URUNC_NET_NAMES and len(nics) == 1 and manifest.find(name, MFT_DEV_NET_BASIC) is None:
                arg = f"{opt}{nics[0]}={arg.partition('=')[2]}"
        out.append(arg)
    return out


def _run_to_snapshot(vm: VM, path: str, prog: str) -> int:
    """--snapshot-at=ready: run until the first POLL with nothing pending, then write the
    snapshot. Unconfined: it creates a memfd and the file (docs/serve.md)."""
    vm.core.on_idle = vm.request_stop
    status = vm.run()
    if status is not None:
        print(f"{prog}: the guest exited (status {status}) before it was ready; no snapshot written",
              file=sys.stderr, flush=True)
        return status
    snap = vm.snapshot()
    try:
        snap.save(path)
    finally:
        snap.close()
    print(f"{prog}: snapshot written to {path}", file=sys.stderr, flush=True)
    return 0


def run_main(argv: list[str], prog: str) -> int:
    """`ukvm run ARGS` / `ukvm-hvt ARGS`; returns the process exit status."""
    err = sys.stderr
    try:
        # Pass 1: find KERNEL; --help and --version act at once.
        kernel_at = None
        restore = None
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg.startswith("--restore="):
                restore = arg[len("--restore="):]
            if arg == "":            # urunc passes empty arguments where it has no option
                i += 1
                continue
            if arg == "--" or not arg.startswith("-"):
                at = i + 1 if arg == "--" else i
                kernel_at = at if at < len(argv) else None
                break
            if arg == "--help":
                print(run_usage(prog), file=err)
                return 1
            if arg == "--version":
                print(f"{prog} tender, version {__version__}\nABI version {hvt.HVT_ABI_VERSION}", file=err)
                return 0
            i += 1
        if restore is not None:
            if kernel_at is not None:
                raise UsageError("--restore goes on from a snapshot: no KERNEL or ARGS may be given")
            kernel_at = len(argv)
            from ukvm.machine.snapshot import Snapshot
            kernel = Snapshot.load(restore)
        elif kernel_at is None:
            raise UsageError("Missing KERNEL operand")
        else:
            kernel = Kernel(argv[kernel_at])
        try:
            manifest = kernel.manifest()
            modules = default_modules(manifest)
            for m in modules:
                m.warn = lambda msg: print(f"{prog}: {msg}", file=err, flush=True)
            # Pass 2: core and module options, resolved against the manifest.
            mem = hvt.MEM_DEFAULT
            sandboxed = True
            guest_cpl = "auto"
            stats = False
            snapshot_at = snapshot_file = None
            for arg in urunc_device_names(argv[:kernel_at], manifest):
                if arg == "--":
                    break
                if arg == "":
                    continue
                if arg.startswith("--mem="):
                    mem = parse_mem(arg[len("--mem="):])
                elif arg == "--x-no-sandbox":
                    sandboxed = False
                elif arg == "--stats":
                    stats = True
                elif arg.startswith("--snapshot-at="):
                    snapshot_at = arg[len("--snapshot-at="):]
                    if snapshot_at != "ready":
                        raise UsageError(f"Malformed argument to --snapshot-at (only `ready'): `{snapshot_at}'")
                elif arg.startswith("--snapshot="):
                    snapshot_file = arg[len("--snapshot="):]
                elif arg.startswith("--restore="):
                    pass
                elif arg.startswith("--x-guest-cpl="):
                    guest_cpl = arg[len("--x-guest-cpl="):]
                    if guest_cpl not in GUEST_CPL_CHOICES:
                        raise UsageError(f"Malformed argument to --x-guest-cpl (auto, 0 or 3): `{guest_cpl}'")
                elif not any(m.handle_arg(arg) for m in modules):
                    raise UsageError(f"Invalid option: `{arg}'")
            if (snapshot_at is None) != (snapshot_file is None):
                raise UsageError("--snapshot-at=ready and --snapshot=FILE go together")
            if snapshot_file is not None and restore is not None:
                raise UsageError("--snapshot and --restore cannot be combined")
            if restore is not None and (mem != hvt.MEM_DEFAULT or guest_cpl != "auto"):
                raise UsageError("--mem and --x-guest-cpl cannot be given with --restore: the snapshot fixes them")
            signal.signal(signal.SIGINT, _signal_exit)
            signal.signal(signal.SIGTERM, _signal_exit)
            warn = lambda msg: print(f"{prog}: {msg}", file=err, flush=True)   # noqa: E731
            if restore is not None:
                vm = VM.from_snapshot(kernel, modules, warn=warn)
            else:
                vm = VM(kernel, argv[kernel_at + 1:], mem, modules, warn=warn, guest_cpl=guest_cpl)
            try:
                if stats:
                    vm.enable_stats()
                if snapshot_file is not None:
                    return _run_to_snapshot(vm, snapshot_file, prog)
                if sandboxed:
                    _test_hook_open_after_sandbox(vm)
                    sandbox_vm(vm)
                else:
                    print(f"{prog}: WARNING: --x-no-sandbox: the tender is NOT confined by seccomp; "
                          "a compromised tender can do anything this process can.", file=err, flush=True)
                return vm.run()
            finally:
                if stats:
                    print(vm.stats.report(), file=err, flush=True)
                vm.close()
        finally:
            kernel.close()
    except UsageError as e:
        if str(e):
            print(f"{prog}: {e}", file=err)
        if e.show_usage:
            print(run_usage(prog), file=err)
        return e.exit_code
    except UkvmError as e:
        print(f"{prog}: {e}" if e.with_prog else str(e), file=err)
        return e.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


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
