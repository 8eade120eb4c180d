"""modules: pluggable tender modules (core, block, net), in upstream's order.

A module may accept command-line options (handle_arg), registers its hypercalls and poll fds in
setup(), runs hooks on halt, and releases what it opened in close(). The VM knows modules only
through this interface, so devices plug in without touching the core.

Annotations name `VM` (ukvm.machine.vm.VM) without importing it: ukvm.machine.vm imports the modules, and the
tender imports only what a run needs (docs/performance.md).

May import: ukvm.errors, ukvm.hvt_abi, ukvm.kvm, ukvm.machine (memory, manifest, vcpu),
ukvm.sandbox (to declare what each module needs). Never a front end.
"""
from __future__ import annotations

import sys

from ukvm.machine.manifest import Manifest



def parse_module_option(arg: str) -> tuple[str, str, str] | None:
    """`--OPT:NAME=VALUE` as (OPT, NAME, VALUE); NAME is 1-67 alphanumerics. None otherwise."""
    if not arg.startswith("--"):
        return None
    opt, colon, rest = arg[2:].partition(":")
    name, equals, value = rest.partition("=")
    if not colon or not equals or not 1 <= len(name) <= 67 or not (name.isascii() and name.isalnum()):
        return None
    return opt, name, value


class Module:
    name = "?"
    usage = ""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.warn = lambda message: print(f"ukvm: {message}", file=sys.stderr, flush=True)

    def handle_arg(self, arg: str) -> bool:
        """Consume a command-line option; False if it is not ours."""
        return False

    def setup(self, vm: VM) -> None:
        """Register hypercalls and poll fds; called once guest memory is loaded."""

    def on_halt(self, vm: VM) -> None:
        """Called when the guest halts (vm.halt_status, vm.halt_cookie), before the tender exits."""

    def on_fatal(self, vm: VM) -> None:
        """Called when a fatal error ends a running guest, before it is reported."""

    def before_run(self, vm: VM) -> None:
        """Called once before the guest's first instruction (after the sandbox is in place)."""

    # --- snapshots (snapshot.py) -----------------------------------------------------------------
    def snapshot_state(self) -> dict:
        """What the guest learned from this module at boot (JSON-able), to check on restore."""
        return {}

    def restore(self, vm: VM, state: dict) -> None:
        """Set up on a VM made from a snapshot (instead of setup); `state` as snapshot_state gave."""
        self.setup(vm)

    def quiesce(self, vm: VM) -> None:
        """Before a snapshot or a reset: finish the device work in flight, stop helper threads."""

    def on_reset(self, vm: VM) -> None:
        """After a reset: forget what the last run left (queued frames), restart helpers."""

    def host_fds(self) -> list[tuple[int, str]]:
        """The descriptors the module uses while the guest runs: (fd, "read"|"write"|"rw"|"block");
        the sandbox lets reads and writes reach these and nothing else."""
        return []

    def close(self) -> None:
        """Release host resources (fds, threads)."""


def module_classes() -> list[type[Module]]:
    """The compiled-in modules, in the order options are offered to them and set up."""
    from ukvm.modules.block import BlockModule
    from ukvm.modules.core import CoreModule
    from ukvm.modules.dumpcore import DumpcoreModule
    from ukvm.modules.gdb import GdbModule
    from ukvm.modules.net import NetModule
    from ukvm.modules.profile import ProfileModule
    from ukvm.modules.trace import TraceModule
    # TraceModule last: its set-up wraps the hypercalls the others registered.
    return [CoreModule, BlockModule, NetModule, GdbModule, DumpcoreModule, ProfileModule, TraceModule]


def default_modules(manifest: Manifest) -> list[Module]:
    return [cls(manifest) for cls in module_classes()]
