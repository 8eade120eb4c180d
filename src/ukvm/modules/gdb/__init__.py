"""modules/gdb: `--gdb` and `--gdb-port=PORT` (hvt-abi.md 16; docs/debugging.md).

The options live here; the protocol stub (stub.py) is imported only when --gdb is
given, so that other runs do not pay for it at start-up.
"""
from __future__ import annotations

from ukvm.errors import UsageError
from ukvm.modules import Module


class GdbModule(Module):
    name = "gdb"
    usage = ("  --gdb (wait for a debugger before the guest's first instruction; runs it at CPL0)\n"
             "  --gdb-port=1234 (TCP port on 127.0.0.1 for --gdb; 0 picks a free one)")

    def __init__(self, manifest):
        super().__init__(manifest)
        self.enabled = False
        self.port = 1234
        self.stub = None

    @property
    def needs_cpl0(self) -> bool:
        """kvm_pvm debugs CPL0 code only (gdbstub.py): the VM then starts in hvt's CPL0 state."""
        return self.enabled

    def handle_arg(self, arg: str) -> bool:
        if arg == "--gdb":
            self.enabled = True
            return True
        if arg.startswith("--gdb-port="):
            value = arg[len("--gdb-port="):]
            if not value.isdigit() or int(value) > 65535:
                raise UsageError("Malformed argument to --gdb-port", show_usage=False)
            self.port = int(value)
            return True
        return False

    def setup(self, vm: VM) -> None:
        if self.enabled:
            from ukvm.modules.gdb.stub import GdbStub
            self.stub = GdbStub(vm, self.warn)
            self.stub.connect(self.port)

    def host_fds(self) -> list[tuple[int, str]]:
        return self.stub.host_fds() if self.stub else []

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
