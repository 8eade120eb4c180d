"""cli/run.py: `ukvm run` and `ukvm-hvt`, a drop-in for solo5-hvt (hvt-abi.md section 2).

The command line is read the way solo5-hvt reads it, in two passes: the first finds KERNEL
(or --restore=FILE) and acts on --help and --version at once; the second gives every option
before KERNEL to the core table below, then to each module's rows (ukvm.options), resolved
against the unikernel's manifest. What nobody accepts is `Invalid option`. The run itself is
a VM, confined by the sandbox unless --x-no-sandbox, whose errors become `prog: message` and an
exit status.
"""
import _signal as signal  # the C module behind `signal`, without its enum import
import os
import sys

from ukvm import __version__
from ukvm import hvt_abi as hvt
from ukvm.errors import SignalExit, UkvmError, UsageError
from ukvm.machine import signals
from ukvm.machine.vm import VM, Kernel
from ukvm.modules import module_classes, modules_for
from ukvm.options import GUEST_CPL, MEM, Option, OptionTable, choice, text
from ukvm.sandbox import sandbox_vm
from ukvm.cli.collector import collect_from_now

CORE_OPTIONS = OptionTable([
    MEM,
    Option("help", "display this help"),
    Option("version", "display version information"),
    Option("x-no-sandbox", "debugging: do not confine the tender with seccomp"),
    Option("stats", "print each hypercall's count and handler time at exit"),
    Option("snapshot-at", "with --snapshot=FILE: run until the guest first waits with no input pending, "
           "write its snapshot to FILE and exit 0", choice("ready"),
           metavar="ready", usage_on_error=True),
    Option("snapshot", "where --snapshot-at writes the snapshot", text(4096, spaces=True), metavar="FILE"),
    Option("restore", "go on from a snapshot instead of KERNEL; attach the same devices",
           text(4096, spaces=True), metavar="FILE"),
    GUEST_CPL,
])


def run_usage(prog: str) -> str:
    return "\n".join([
        f"usage: {prog} [ CORE OPTIONS ] [ MODULE OPTIONS ] [ -- ] KERNEL [ ARGS ]",
        "KERNEL is the filename of the unikernel to run.",
        "ARGS are passed verbatim to the unikernel.",
        "Core options:",
        CORE_OPTIONS.usage(),
        "Compiled-in modules: " + "".join(cls.name + " " for cls in module_classes()),
        *(cls.usage() for cls in module_classes() if cls.options),
    ])


class _Done(Exception):
    """--help or --version answered: the run ends with this status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def find_kernel(argv: list[str], prog: str) -> tuple[int | None, str | None]:
    """Pass 1: (index of KERNEL or None, --restore FILE or None); --help and --version act at
    once (raise _Done), wherever they are among the options."""
    restore = None
    for i, arg in enumerate(argv):
        if arg.startswith("--restore="):
            restore = arg[len("--restore="):]
        if arg == "":                # urunc passes empty arguments where it has no option
            continue
        if arg == "--" or not arg.startswith("-"):
            at = i + 1 if arg == "--" else i
            return (at if at < len(argv) else None), restore
        if arg == "--help":
            print(run_usage(prog), file=sys.stderr)
            raise _Done(1)
        if arg == "--version":
            print(f"{prog} tender, version {__version__}\nABI version {hvt.HVT_ABI_VERSION}", file=sys.stderr)
            raise _Done(0)
    return None, restore


def parse_options(args: list[str], modules) -> dict:
    """Pass 2: the core options' values; module options go to their modules."""
    values = CORE_OPTIONS.defaults()
    for arg in args:
        if arg == "--":
            break
        if arg == "":
            continue
        hit = CORE_OPTIONS.match(arg)
        if hit is not None:
            opt, device, value = hit
            CORE_OPTIONS.store(values, opt, device, CORE_OPTIONS.convert(opt, value))
        elif not any(m.handle_arg(arg) for m in modules):
            raise UsageError(f"Invalid option: `{arg}'")
    if (values["snapshot-at"] is None) != (values["snapshot"] is None):
        raise UsageError("--snapshot-at=ready and --snapshot=FILE go together")
    if values["restore"] is not None:
        if values["snapshot"] is not None:
            raise UsageError("--snapshot and --restore cannot be combined")
        if values["mem"] != hvt.MEM_DEFAULT or values["x-guest-cpl"] != "auto":
            raise UsageError("--mem and --x-guest-cpl cannot be given with --restore: the snapshot fixes them")
    return values


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


def _run_to_snapshot(vm: VM, path: str, prog: str, sandboxed: bool) -> int:
    """--snapshot-at=ready: run until the first POLL with nothing pending, then write the
    snapshot. The file is made (O_EXCL, in the target's directory) before the guest runs; the
    tender is confined like any run, plus what capture and saving need (docs/security.md)."""
    from ukvm.machine.snapshot import SnapshotWriter
    from ukvm.sandbox import confine_snapshot_run
    writer = SnapshotWriter(path)
    try:
        if sandboxed:
            confine_snapshot_run(vm, writer)
        vm.core.on_idle = vm.request_stop
        status = vm.run()
        signals.deliver()                    # one that came as the run ended: no snapshot
        if status is not None:
            print(f"{prog}: the guest exited (status {status}) before it was ready; no snapshot written",
                  file=sys.stderr, flush=True)
            return status
        with signals.unblocked():            # a signal ends the capture or the write; close() removes the file
            snap = vm.snapshot()
            try:
                writer.write(snap)
            finally:
                snap.close()
    finally:
        writer.close()
    print(f"{prog}: snapshot written to {path}", file=sys.stderr, flush=True)
    return 0


def _run(vm: VM, values: dict, prog: str) -> int:
    """Run a built VM as the options say; the VM is closed by the caller."""
    collect_from_now()        # start-up is over (ukvm/start.py)
    if values["snapshot"] is not None:
        return _run_to_snapshot(vm, values["snapshot"], prog, not values["x-no-sandbox"])
    if not values["x-no-sandbox"]:
        _test_hook_open_after_sandbox(vm)
        sandbox_vm(vm)
    else:
        print(f"{prog}: WARNING: --x-no-sandbox: the tender is NOT confined by seccomp; "
              "a compromised tender can do anything this process can.", file=sys.stderr, flush=True)
    status = vm.run()
    signals.deliver()       # one that came during the halt hooks ends the tender as during the run
    return status


def _boot_and_run(argv: list[str], kernel_at: int, restore: str | None, kernel, prog: str) -> int:
    def warn(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)
    manifest = kernel.manifest()
    options = urunc_device_names(argv[:kernel_at], manifest)
    modules = modules_for(manifest, options)     # only those the options and manifest use
    for m in modules:
        m.warn = warn
    values = parse_options(options, modules)
    signal.signal(signal.SIGINT, _signal_exit)
    signal.signal(signal.SIGTERM, _signal_exit)
    signals.end_runs_on((signal.SIGINT, signal.SIGTERM))     # before any thread starts
    if restore is not None:
        vm = VM.from_snapshot(kernel, modules, warn=warn)
    else:
        vm = VM(kernel, argv[kernel_at + 1:], values["mem"], modules, warn=warn, guest_cpl=values["x-guest-cpl"])
    try:
        if values["stats"]:
            vm.enable_stats()
        return _run(vm, values, prog)
    finally:
        if values["stats"]:
            print(vm.stats.report(), file=sys.stderr, flush=True)
        vm.close()


def run_main(argv: list[str], prog: str) -> int:
    """`ukvm run ARGS` / `ukvm-hvt ARGS`; returns the process exit status."""
    err = sys.stderr
    try:
        kernel_at, restore = find_kernel(argv, prog)
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
            return _boot_and_run(argv, kernel_at, restore, kernel, prog)
        finally:
            kernel.close()
    except _Done as done:
        return done.status
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
