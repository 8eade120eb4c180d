"""modules: pluggable tender modules (core, block, net, gdb, dumpcore, trace, profile).

A module declares its command-line options as rows of the options layer (`options`, see
ukvm.options; `--block:NAME=PATH`, `--gdb` ...) and applies each value it is given in
set_option; it registers its hypercalls and poll fds in setup(), runs hooks on halt, and
releases what it opened in close(). The VM knows modules only through this interface, so
devices plug in without touching the core.

Annotations name `VM` (ukvm.machine.vm.VM) without importing it: ukvm.machine.vm imports the
modules, and the tender imports only what a run needs (docs/performance.md).

May import: ukvm.errors, ukvm.hvt_abi, ukvm.options, ukvm.kvm, ukvm.machine (memory, manifest,
vcpu; supervisor for its frame, state and code range: gdb, trace, dumpcore, profile; signals:
core's POLL and gdb's waits),
ukvm.sandbox.needs (the words to declare what each module needs). Never a front end
(tests/unit/test_layers.py checks it).
"""
from __future__ import annotations

import sys

from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, Manifest
from ukvm.options import BadValue, Option, OptionTable


class Module:
    name = "?"
    options: tuple[Option, ...] = ()      # this module's rows of the options table

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.warn = lambda message: print(f"ukvm: {message}", file=sys.stderr, flush=True)

    @classmethod
    def option_table(cls) -> OptionTable:
        table = cls.__dict__.get("_table")
        if table is None:
            table = OptionTable(cls.options)
            cls._table = table
        return table

    @classmethod
    def usage(cls) -> str:
        return cls.option_table().usage()

    def handle_arg(self, arg: str) -> bool:
        """Consume a command-line option; False if it is not ours or its value is declined
        (solo5-hvt then says `Invalid option`). A malformed value of an option whose row says
        so raises UsageError."""
        table = self.option_table()
        hit = table.match(arg)
        if hit is None:
            return False
        opt, device, value = hit
        try:
            parsed = table.convert(opt, value)
        except BadValue:
            return False
        return self.set_option(opt.name, device, parsed)

    def set_option(self, name: str, device: str | None, value) -> bool:
        """Apply one parsed option of ours (`device`: the NAME of `--opt:NAME=`); False
        declines it."""
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
        """Shorthand for modules that only read or write their own descriptors once confined:
        (fd, "read"|"write"|"rw"|"block"); the default sandbox_needs allows just that."""
        return []

    def sandbox_needs(self, vm: VM) -> Needs:
        """The system calls this module makes once the tender is confined (ukvm.sandbox.needs),
        on the descriptors it holds then; the sandbox allows the union of every part's needs and
        nothing else. Called after setup (or restore), just before the filter is installed."""
        from ukvm.sandbox.needs import Needs
        needs = Needs()
        calls = {"read": ("read", "readv"), "write": ("write",), "rw": ("read", "readv", "write"),
                 "block": ("preadv2", "pwritev2", "fsync")}
        for fd, kind in self.host_fds():
            needs.on_fds(calls[kind], {fd})
        return needs

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


# Each module with the names of its options and the manifest device type it serves, in
# module_classes()'s order, so that a command line imports only the modules its options and its
# unikernel's manifest use: a hello needs core alone, and each module not imported is ~0.2 ms
# off every start (docs/performance.md). tests/unit/test_module_registry.py checks it against
# the classes.
REGISTRY = (
    ("ukvm.modules.core", "CoreModule", (), None),
    ("ukvm.modules.block", "BlockModule", ("block", "block-sector-size"), MFT_DEV_BLOCK_BASIC),
    ("ukvm.modules.net", "NetModule", ("net", "net-mac", "net-ring"), MFT_DEV_NET_BASIC),
    ("ukvm.modules.gdb", "GdbModule", ("gdb", "gdb-port"), None),
    ("ukvm.modules.dumpcore", "DumpcoreModule", ("dumpcore",), None),
    ("ukvm.modules.profile", "ProfileModule", ("profile", "profile-rate"), None),
    ("ukvm.modules.trace", "TraceModule", ("trace",), None),
)


def modules_for(manifest: Manifest, options: list[str]) -> list[Module]:
    """The modules a run needs: core, every module one of `options` (`--NAME`, `--NAME=...`,
    `--NAME:DEV=...`) belongs to, and every module serving a device type the manifest declares.
    An option no module has is then refused as by the full set."""
    named = {opt[2:].partition("=")[0].partition(":")[0] for opt in options if opt.startswith("--")}
    types = {e.type for e in manifest.devices()}
    chosen = []
    for path, cls_name, option_names, device_type in REGISTRY:
        if (not option_names or named.intersection(option_names)
                or device_type in types):
            chosen.append(getattr(__import__(path, fromlist=[cls_name]), cls_name)(manifest))
    return chosen
