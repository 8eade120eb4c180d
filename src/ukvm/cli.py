"""cli.py: the `ukvm` command (run, build, manifest) and `ukvm-hvt`, a drop-in for solo5-hvt.

The CLI is a thin layer over the library: it parses arguments the way solo5-hvt does
(hvt-abi.md section 2), builds a VM, runs it and turns errors into `prog: message` + exit status.
"""
import _signal as signal  # the C module behind `signal`, without its enum import
import os
import sys

from ukvm import __version__
from ukvm import hvt_abi as hvt
from ukvm.errors import SignalExit, UkvmError, UsageError
from ukvm.modules import default_modules, module_classes
from ukvm.sandbox import sandbox_vm
from ukvm.vm import GUEST_CPL_CHOICES, VM, Kernel


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
        "    --x-guest-cpl=auto|0|3 (privilege level of the guest's code; auto: 3 for guests built by",
        "      ukvm build, and for other guests under ukvm's supervisor where the host emulates CPL0)",
        "Compiled-in modules: " + "".join(cls.name + " " for cls in module_classes()),
    ]
    lines += [cls.usage for cls in module_classes() if cls.usage]
    return "\n".join(lines)


def parse_mem(value: str) -> int:
    """--mem=N: N in MiB, parsed like C `%zd` (trailing garbage ignored), wrapped to 64 bits."""
    text = value.lstrip(" \t\n\v\f\r")
    sign = text[:1] if text[:1] in "+-" else ""
    digits = text[len(sign):]
    digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
    size = (int(sign + digits) << 20) % (1 << 64) if digits else 0
    if size == 0:
        raise UsageError("Malformed argument to --mem", show_usage=False)
    return size


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


def run_main(argv: list[str], prog: str) -> int:
    """`ukvm run ARGS` / `ukvm-hvt ARGS`; returns the process exit status."""
    err = sys.stderr
    try:
        # Pass 1: find KERNEL; --help and --version act at once.
        kernel_at = None
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                kernel_at = i + 1 if i + 1 < len(argv) else None
                break
            if not arg.startswith("-"):
                kernel_at = i
                break
            if arg == "--help":
                print(run_usage(prog), file=err)
                return 1
            if arg == "--version":
                print(f"{prog} tender, version {__version__}\nABI version {hvt.HVT_ABI_VERSION}", file=err)
                return 0
            i += 1
        if kernel_at is None:
            raise UsageError("Missing KERNEL operand")
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
            for arg in argv[:kernel_at]:
                if arg == "--":
                    break
                if arg.startswith("--mem="):
                    mem = parse_mem(arg[len("--mem="):])
                elif arg == "--x-no-sandbox":
                    sandboxed = False
                elif arg.startswith("--x-guest-cpl="):
                    guest_cpl = arg[len("--x-guest-cpl="):]
                    if guest_cpl not in GUEST_CPL_CHOICES:
                        raise UsageError(f"Malformed argument to --x-guest-cpl (auto, 0 or 3): `{guest_cpl}'")
                elif not any(m.handle_arg(arg) for m in modules):
                    raise UsageError(f"Invalid option: `{arg}'")
            signal.signal(signal.SIGINT, _signal_exit)
            signal.signal(signal.SIGTERM, _signal_exit)
            vm = VM(kernel, argv[kernel_at + 1:], mem, modules,
                    warn=lambda msg: print(f"{prog}: {msg}", file=err, flush=True), guest_cpl=guest_cpl)
            try:
                if sandboxed:
                    _test_hook_open_after_sandbox(vm)
                    sandbox_vm(vm)
                else:
                    print(f"{prog}: WARNING: --x-no-sandbox: the tender is NOT confined by seccomp; "
                          "a compromised tender can do anything this process can.", file=err, flush=True)
                return vm.run()
            finally:
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
  build SRC... -o APP.hvt [ --manifest manifest.json ] [ --cflags=FLAGS ]
                                           compile and link a unikernel against the ukvm runtime
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
    if cmd == "build":
        from ukvm.build import build_main
        return build_main(rest)
    if cmd == "manifest":
        from ukvm.manifest_tool import manifest_main
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
