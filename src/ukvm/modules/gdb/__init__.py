"""modules/gdb: `--gdb` and `--gdb-port=PORT` (hvt-abi.md 16; docs/debugging.md).

The options live here; the protocol stub (stub.py) is imported only when --gdb is
given, so that other runs do not pay for it at start-up.
"""
from __future__ import annotations

from ukvm.modules import Module
from ukvm.options import Option, integer


class GdbModule(Module):
    name = "gdb"
    options = (
        Option("gdb", "wait for a debugger before the guest's first instruction"),
        Option("gdb-port", "TCP port on 127.0.0.1 for --gdb; 0 picks a free one", integer(0, 65535),
               metavar="PORT", default="1234", explain=False),
    )

    def __init__(self, manifest):
        super().__init__(manifest)
        self.enabled = False
        self.port = 1234
        self.stub = None

    @property
    def needs_cpl0(self) -> bool:
        """Under --gdb a guest stays at CPL3 when the CPL0 code beside it reports its debug traps
        (the supervisor, a current ukvm runtime); other guests start in hvt's CPL0 state, where
        kvm_pvm debugs through KVM itself (vm.debuggable_at_cpl3, stub.py)."""
        return self.enabled

    def set_option(self, opt: str, _device, value) -> bool:
        if opt == "gdb":
            self.enabled = True
        else:
            self.port = value
        return True

    def setup(self, vm: VM) -> None:
        if self.enabled:
            from ukvm.modules.gdb.stub import GdbStub
            self.stub = GdbStub(vm, self.warn)
            self.stub.connect(self.port)

    def sandbox_needs(self, vm: VM) -> Needs:
        from ukvm.sandbox.needs import Needs
        return self.stub.sandbox_needs(vm) if self.stub else Needs()

    def before_run(self, vm: VM) -> None:
        if self.stub:
            self.stub.serve(b"S05")

    def on_halt(self, vm: VM) -> None:
        if self.stub:
            self.stub.on_halt(vm)

    def on_fatal(self, vm: VM) -> None:
        if self.stub:
            self.stub.on_fatal(vm)

    def close(self) -> None:
        if self.stub:
            self.stub.close()
            self.stub = None
