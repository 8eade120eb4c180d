"""exits.py: hypercall table and vCPU exit dispatch (hvt-abi.md sections 8.2 and 13).

handle_exit() is a plain function over the kvm_run bytes so that tests can feed it fabricated
exits without KVM. It returns None to resume the guest, or the HALT argument GPA when the guest
halts; everything fatal raises GuestFault with the upstream message.
"""
from __future__ import annotations

import time

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault
from ukvm.kvm import abi



class HypercallTable:
    """Handlers indexed by hypercall number; each takes the argument GPA."""

    def __init__(self):
        self.handlers: list = [None] * hvt.HVT_HYPERCALL_MAX
        # Under the CPL3 supervisor: (its report port, a builder of the error a report stands
        # for); supervisor.py.
        self.report_port: tuple[int, Callable[[], GuestFault]] | None = None
        # Under --gdb: handles KVM_EXIT_DEBUG (modules/gdb/stub.py).
        self.on_debug_exit: Callable[[object], None] | None = None
        # Under --gdb with the guest at CPL3: handles a stop the supervisor or the runtime
        # reports at hvt.UKVM_DEBUG_PORT, with the address of the guest registers it saved.
        self.on_debug_port: Callable[[int], None] | None = None

    def register(self, nr: int, handler: Callable[[int], None]) -> None:
        if not 0 < nr < hvt.HVT_HYPERCALL_MAX or nr == hvt.HVT_HYPERCALL_HALT:
            raise ValueError(f"hypercall {nr} cannot be registered")
        if self.handlers[nr] is not None:
            raise ValueError(f"hypercall {nr} already registered")
        self.handlers[nr] = handler

    def enable_stats(self) -> HypercallStats:
        """Count every registered hypercall and the time its handler takes (`ukvm run --stats`,
        `ukvm serve`'s metrics). Call after the modules registered; without it the exit loop
        pays nothing."""
        stats = HypercallStats()
        for nr, handler in enumerate(self.handlers):
            if handler is not None:
                self.handlers[nr] = stats.wrap(nr, handler)
        return stats


class HypercallStats:
    """Per hypercall: how many, and the seconds spent in the tender's handler."""

    def __init__(self):
        self.counts = [0] * hvt.HVT_HYPERCALL_MAX
        self.seconds = [0.0] * hvt.HVT_HYPERCALL_MAX

    def wrap(self, nr: int, handler: Callable[[int], None]) -> Callable[[int], None]:
        counts, seconds, clock = self.counts, self.seconds, time.perf_counter

        def counted(gpa: int) -> None:
            t0 = clock()
            try:
                handler(gpa)
            finally:
                counts[nr] += 1
                seconds[nr] += clock() - t0
        return counted

    def count_halt(self) -> None:
        self.counts[hvt.HVT_HYPERCALL_HALT] += 1

    def report(self) -> str:
        lines = [f"{'hypercall':<12} {'count':>10} {'total ms':>10} {'mean us':>9}"]
        for nr, name in hvt.HYPERCALL_NAMES.items():
            if self.counts[nr]:
                mean = self.seconds[nr] / self.counts[nr] * 1e6
                lines.append(f"{name:<12} {self.counts[nr]:>10} {self.seconds[nr] * 1e3:>10.3f} {mean:>9.1f}")
        return "\n".join(lines)


def translation_fault(rip: int) -> GuestFault:
    return GuestFault(f"KVM: host/guest translation fault: rip={rip:#x}")


def handle_exit(run, table: HypercallTable, get_rip: Callable[[], int],
                is_readonly: Callable[[int], bool]) -> int | None:
    """Act on one exit described by the kvm_run area `run`."""
    reason = abi.KVM_RUN_EXIT_REASON.unpack_from(run, abi.KVM_RUN_EXIT_REASON_OFFSET)[0]
    if reason == abi.KVM_EXIT_IO:
        direction, size, port, _count, data_offset = abi.KVM_RUN_IO.unpack_from(run, abi.KVM_RUN_EXIT_OFFSET)
        nr = port - hvt.HVT_HYPERCALL_PIO_BASE
        if direction != abi.KVM_EXIT_IO_OUT or size != 4 or not 0 <= nr < hvt.HVT_HYPERCALL_MAX:
            if table.on_debug_port is not None and port == hvt.UKVM_DEBUG_PORT and size == 4 \
                    and direction == abi.KVM_EXIT_IO_OUT:
                table.on_debug_port(hvt.U32.unpack_from(run, data_offset)[0])
                return None
            if table.report_port is not None and port == table.report_port[0]:
                raise table.report_port[1]()
            raise GuestFault(f"Invalid guest port access: port={port:#x}")
        gpa = hvt.U32.unpack_from(run, data_offset)[0]
        if nr == hvt.HVT_HYPERCALL_HALT:
            return gpa
        handler = table.handlers[nr]
        if handler is None:
            raise GuestFault(f"Invalid guest hypercall: num={nr}")
        handler(gpa)
        return None
    if reason == abi.KVM_EXIT_DEBUG and table.on_debug_exit is not None:
        table.on_debug_exit(run)
        return None
    if reason == abi.KVM_EXIT_FAIL_ENTRY:
        code = abi.KVM_RUN_FAIL_ENTRY.unpack_from(run, abi.KVM_RUN_EXIT_OFFSET)[0]
        raise GuestFault(f"KVM: entry failure: hw_entry_failure_reason={code:#x}")
    if reason == abi.KVM_EXIT_INTERNAL_ERROR:
        sub = abi.KVM_RUN_INTERNAL.unpack_from(run, abi.KVM_RUN_EXIT_OFFSET)[0]
        raise GuestFault(f"KVM: internal error exit: suberror={sub:#x}")
    if reason == abi.KVM_EXIT_MMIO:
        # Hardware KVM reports a guest write to a host read-only page as EFAULT from KVM_RUN;
        # kvm_pvm reports it as an MMIO write exit instead. Both are the same translation fault.
        phys, _data, _len, is_write = abi.KVM_RUN_MMIO.unpack_from(run, abi.KVM_RUN_EXIT_OFFSET)
        if is_write and is_readonly(phys):
            raise translation_fault(get_rip())
    raise GuestFault(f"KVM: unhandled exit: exit_reason={reason:#x}, rip={get_rip():#x}")
