"""modules/trace.py: `--trace=FILE|-`: every hypercall the guest makes, one JSON object a line
(docs/debugging.md).

A line holds the hypercall's name, its decoded arguments (IN fields read before the handler runs),
its results (OUT fields read after), the seconds since the trace began and the microseconds the
tender spent in the handler. Exits that are not hypercall returns get lines of their own: the
guest's halt, debug exits (under --gdb), and the fatal error that ends a run (a supervisor
report, an unhandled exit, a bad hypercall).

Off by default and free when off: the module only swaps the hypercall table's handlers for
wrappers when --trace is given, so the run loop is the same code either way. The trace file is
opened at set-up, before the sandbox, which then allows writes to that one descriptor.
"""
from __future__ import annotations

import os
import sys
import time

from ukvm import hvt_abi as hvt
from ukvm.errors import UkvmError, UsageError
from ukvm.machine import signals
from ukvm.modules import Module
from ukvm.options import Option, text

PREVIEW = 64        # PUTS: how many bytes of the text a line shows

# Per hypercall: (argument struct, names of its fields, names of the OUT fields).
LAYOUTS = {
    hvt.HVT_HYPERCALL_WALLTIME: (hvt.hvt_hc_walltime, ("nsecs",), ("nsecs",)),
    hvt.HVT_HYPERCALL_PUTS: (hvt.hvt_hc_puts, ("data", "len"), ()),
    hvt.HVT_HYPERCALL_POLL: (hvt.hvt_hc_poll, ("timeout_nsecs", "ready_set", "ret"), ("ready_set", "ret")),
    hvt.HVT_HYPERCALL_BLOCK_WRITE: (hvt.hvt_hc_block_io, ("handle", "offset", "data", "len", "ret"), ("ret",)),
    hvt.HVT_HYPERCALL_BLOCK_READ: (hvt.hvt_hc_block_io, ("handle", "offset", "data", "len", "ret"), ("ret",)),
    hvt.HVT_HYPERCALL_NET_WRITE: (hvt.hvt_hc_net_io, ("handle", "data", "len", "ret"), ("ret",)),
    hvt.HVT_HYPERCALL_NET_READ: (hvt.hvt_hc_net_io, ("handle", "data", "len", "ret"), ("len", "ret")),
}
ADDRESS_FIELDS = frozenset(("data",))     # shown in hex
RESULTS = {hvt.SOLO5_R_OK: "OK", hvt.SOLO5_R_AGAIN: "AGAIN", hvt.SOLO5_R_EINVAL: "EINVAL",
           hvt.SOLO5_R_EUNSPEC: "EUNSPEC"}


class Tracer:
    """Writes trace lines to one descriptor; wraps handlers."""

    def __init__(self, fd: int, mem):
        import json           # only when tracing: json costs every start-up ~1.5 ms otherwise
        self.dumps = json.dumps
        self.fd, self.mem = fd, mem
        self.t0 = time.monotonic()
        self.extra: dict = {}            # fields every line carries (serve: the connection)

    def emit(self, record: dict) -> None:
        record["t"] = round(time.monotonic() - self.t0, 6)
        line = self.dumps(record, separators=(",", ":")) + "\n"
        data = line.encode()
        try:
            with signals.unblocked():    # a FIFO nobody drains blocks: a signal still ends it
                while data:
                    data = data[os.write(self.fd, data):]
        except OSError:
            pass        # a trace nobody reads any more does not end the guest

    def _fields(self, nr: int, gpa: int) -> dict | None:
        """The argument struct as a dict, or None if it lies outside guest memory (the handler
        will refuse it)."""
        st, names, _out = LAYOUTS[nr]
        try:
            values = self.mem.unpack(st, gpa)
        except UkvmError:
            return None
        return {n: (f"{v:#x}" if n in ADDRESS_FIELDS else v) for n, v in zip(names, values)}

    def wrap(self, nr: int, handler):
        name = hvt.HYPERCALL_NAMES[nr]
        _st, _names, out_names = LAYOUTS[nr]
        clock = time.perf_counter

        def traced(gpa: int) -> None:
            before = self._fields(nr, gpa)
            record = {"call": name, "gpa": f"{gpa:#x}", **self.extra}
            if before is not None:
                record["args"] = {k: v for k, v in before.items() if k not in out_names or k == "len"}
                if nr == hvt.HVT_HYPERCALL_PUTS:
                    record["text"] = self._preview(int(before["data"], 16), before["len"])
            t0 = clock()
            try:
                handler(gpa)
            except BaseException as e:
                record["us"] = round((clock() - t0) * 1e6, 1)
                record["error"] = str(e)
                self.emit(record)
                raise
            record["us"] = round((clock() - t0) * 1e6, 1)
            after = self._fields(nr, gpa)
            if after is not None and out_names:
                out = {k: after[k] for k in out_names}
                if "ret" in out:
                    out["ret"] = RESULTS.get(out["ret"], out["ret"])
                record["result"] = out
            self.emit(record)
        return traced

    def _preview(self, data: int, length: int) -> str:
        try:
            raw = self.mem.read(data, min(length, PREVIEW))
        except UkvmError:
            return ""
        return raw.decode("utf-8", "replace") + ("..." if length > PREVIEW else "")


class TraceModule(Module):
    name = "trace"
    options = (Option("trace", "write every hypercall and non-hypercall exit as JSON lines to FILE; "
                      "- is the tender's standard error", text(4096, spaces=True), metavar="FILE|-"),)

    def __init__(self, manifest):
        super().__init__(manifest)
        self.path: str | None = None
        self.fd = -1
        self.tracer: Tracer | None = None

    def set_option(self, _opt: str, _device, value: str) -> bool:
        self.path = value
        return True

    def setup(self, vm: VM) -> None:
        """Runs after every other module registered its hypercalls (it is the last module)."""
        if self.path is None:
            return
        if self.fd < 0:
            self.fd = open_trace(self.path)
        self.tracer = tracer = Tracer(self.fd, vm.mem)
        table = vm.hypercalls
        for nr, handler in enumerate(table.handlers):
            if handler is not None:
                table.handlers[nr] = tracer.wrap(nr, handler)
        if table.on_debug_exit is not None:
            table.on_debug_exit = self._traced_debug_exit(vm, table.on_debug_exit)
        if table.on_debug_port is not None:       # --gdb at CPL3: a stop the CPL0 code reported
            table.on_debug_port = self._traced_debug_port(table.on_debug_port)
        tracer.emit({"event": "start", "guest_cpl": vm.guest_cpl, "supervised": bool(vm.supervised),
                     "hypercalls": [hvt.HYPERCALL_NAMES[nr] for nr, h in enumerate(table.handlers)
                                    if h is not None]})

    def _traced_debug_port(self, on_debug_port):
        def traced(frame_gpa: int) -> None:
            self.tracer.emit({"exit": "debug", "frame": f"{frame_gpa:#x}"})
            on_debug_port(frame_gpa)
        return traced

    def _traced_debug_exit(self, vm: VM, on_debug_exit):
        def traced(run) -> None:
            self.tracer.emit({"exit": "debug", "rip": f"{vm.rip():#x}"})
            on_debug_exit(run)
        return traced

    def on_halt(self, vm: VM) -> None:
        if self.tracer is not None:
            record = {"call": "halt", "args": {"cookie": f"{vm.halt_cookie:#x}", "status": vm.halt_status}}
            self._supervisor_counts(vm, record)
            self.tracer.emit(record)

    def on_fatal(self, vm: VM) -> None:
        if self.tracer is None:
            return
        error = sys.exc_info()[1]        # called from the run's except clause
        record = {"exit": "fatal", "error": str(error) if error is not None else "?"}
        try:
            record["rip"] = f"{vm.rip():#x}"
        except UkvmError:
            pass
        self._supervisor_counts(vm, record)
        self.tracer.emit(record)

    @staticmethod
    def _supervisor_counts(vm: VM, record: dict) -> None:
        """Under the supervisor, the privileged instructions it emulated and the exceptions it
        passed to the guest: work done inside the guest that no exit shows."""
        if vm.supervised:
            from ukvm.machine.supervisor import state
            s = state(vm.mem)
            record["supervisor"] = {"emulated": s["n_emulated"], "delivered": s["n_delivered"]}

    def host_fds(self) -> list[tuple[int, str]]:
        return [(self.fd, "write")] if self.fd >= 0 else []

    def close(self) -> None:
        if self.fd > 2 and self.path is not None:      # serve's clones share serve's descriptor
            os.close(self.fd)
        self.fd = -1


class ConnectionTracer:
    """`ukvm serve --trace=FILE --trace-every=N`: a clone's hypercalls traced for one connection
    in N. The clone keeps both handler lists; assigning a connection swaps the table's entries
    in place (the run loop holds the list), so untraced connections run the plain handlers."""

    def __init__(self, vm: VM, fd: int, every: int):
        self.every = every
        self.tracer = Tracer(fd, vm.mem)
        self.table = vm.hypercalls.handlers
        self.plain = list(self.table)
        self.traced = [self.tracer.wrap(nr, h) if h is not None else None for nr, h in enumerate(self.plain)]

    def assign(self, number: int) -> None:
        """Called as connection `number` (from 1) is given to the clone, and with 0 when its run
        is over (what the clone does between connections is no connection's)."""
        chosen = self.traced if number and number % self.every == 0 else self.plain
        self.tracer.extra = {"conn": number}
        for nr, handler in enumerate(chosen):
            self.table[nr] = handler


def open_trace(path: str) -> int:
    """The descriptor a trace goes to: standard error for `-`, else FILE created or truncated."""
    if path == "-":
        return 2
    try:
        # O_APPEND: serve's clones write whole lines to one file from several threads.
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(f"trace: cannot open {path}: {os.strerror(e.errno)}", show_usage=False) from None
