"""modules/gdb/traps.py: what the stub needs to debug a guest whose code runs at CPL3 (docs/debugging.md).

kvm_pvm runs CPL3 code natively and hands its #DB and #BP to the guest's own IDT, not to KVM, so
the CPL0 code there reports them: the supervisor for Solo5-built guests (supervisor.c), the
runtime for ukvm-built ones (cpu.c). Either saves the guest's registers in one frame layout,
`out`s the frame's address to UKVM_DEBUG_PORT, and when the vCPU is resumed returns to the guest
with whatever the frame then holds. TrapFrame reads and writes that frame; SoftwareBreakpoints
puts gdb's breakpoints into guest text as int3.
"""
from __future__ import annotations

import os
import struct

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault, UkvmError
# FRAME, FRAME_GPRS: the supervisor's frame, which the runtime's cpu.c shares.
from ukvm.machine.supervisor import FRAME, FRAME_GPRS, STATE_FIELDS, SV_STACK_BASE, SV_STACK_TOP, SV_STATE

RFLAGS_TF = 1 << 8
VEC_BP, VEC_GP = 3, 13
GP_EC_IDT_BP = 3 << 3 | 2          # #GP raised by int3 at CPL3 through a DPL 0 gate
INT3 = b"\xcc"


class TrapFrame:
    """The guest's registers as the CPL0 code saved them at a debug stop."""

    def __init__(self, vm: VM, gpa: int):
        self.vm, self.gpa = vm, gpa
        if vm.supervised:        # on the supervisor's own stack, below what the guest may reach
            if not SV_STACK_BASE <= gpa <= SV_STACK_TOP - FRAME.size:
                raise GuestFault(f"gdb: debug stop with a frame outside the supervisor's stack: {gpa:#x}")
            raw = vm.mem.host_read(gpa, FRAME.size)
        else:                    # the runtime's trap stack, in guest memory like any guest data
            raw = vm.mem.read(gpa, FRAME.size)
        values = FRAME.unpack(raw)
        self.regs = {name: v for name, v in zip(FRAME_GPRS, values) if name}
        self.vector, self.ec = values[16], values[17]
        self.regs.update(rip=values[18], cs=values[19], rflags=values[20], rsp=values[21], ss=values[22])

    def is_breakpoint(self) -> bool:
        return self.vector == VEC_BP or (self.vector == VEC_GP and self.ec == GP_EC_IDT_BP)

    def int3_address(self) -> int:
        """Where the int3 is: #GP stops at it, a #BP trap after it."""
        return self.regs["rip"] - (1 if self.vector == VEC_BP else 0)

    def write_back(self) -> None:
        r = self.regs
        values = [r[name] if name else 0 for name in FRAME_GPRS]
        values += [self.vector, self.ec, r["rip"], r["cs"], r["rflags"] | 2, r["rsp"], r["ss"]]
        data = FRAME.pack(*(v & (2**64 - 1) for v in values))
        if self.vm.supervised:
            self.vm.mem.host_write(self.gpa, data)
        else:
            with self.vm.mem.writable_view(self.gpa, FRAME.size) as view:
                view[:] = data


def enable_reports(vm: VM, on: bool = True) -> None:
    """Ask the CPL0 code to report #DB and int3 from the guest (or, with `on` False after a
    detach, to leave them to the guest again): the supervisor's state flag, or the runtime's
    boot-info feature bit (read by it at each trap, so that a VM restored from a snapshot can be
    debugged too)."""
    if vm.supervised:
        vm.mem.host_write(SV_STATE + 8 * STATE_FIELDS.index("debug"), struct.pack("<Q", int(on)))
        return
    if on:
        vm.host_features |= hvt.UKVM_FEATURE_DEBUG  # for boot info, if it is still to be written
    else:
        vm.host_features &= ~hvt.UKVM_FEATURE_DEBUG
    # A VM restored from a snapshot read its boot info long ago: update it in place (a fresh one
    # gets the whole of it written after set-up, this field included).
    at = hvt.HVT_BOOT_INFO_BASE + 40                  # hvt_boot_info.host_features
    vm.mem.host_write(at, struct.pack("<I", vm.host_features & 0xFFFFFFFF))


class SoftwareBreakpoints:
    """int3 bytes in guest text, with the bytes they replaced. Text is read-only in the tender's
    own mapping (a guest write to it is a fault), so the bytes go through /proc/self/mem, which
    may write read-only private pages; the descriptor is opened before the sandbox, which then
    allows positioned reads and writes on it (it is declared like a block device's)."""

    def __init__(self, mem):
        self.mem = mem
        self.saved: dict[int, bytes] = {}
        self.fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)

    def _poke(self, gpa: int, data: bytes) -> None:
        if os.pwritev(self.fd, [data], self.mem.host_addr + gpa) != len(data):
            raise UkvmError(f"gdb: could not write guest text at {gpa:#x}")

    def insert(self, gpa: int) -> None:
        if gpa in self.saved:
            return
        self.mem.check(gpa, 1)
        original = self.mem.read(gpa, 1)
        self._poke(gpa, INT3)
        self.saved[gpa] = original

    def remove(self, gpa: int) -> None:
        original = self.saved.pop(gpa, None)
        if original is not None:
            self._poke(gpa, original)

    def remove_all(self) -> None:
        for gpa in list(self.saved):
            self.remove(gpa)

    def hide(self, gpa: int, data: bytes) -> bytes:
        """`data` read at `gpa` with the original bytes where breakpoints sit (for `m`)."""
        out = bytearray(data)
        for at, original in self.saved.items():
            if gpa <= at < gpa + len(out):
                out[at - gpa] = original[0]
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        """An `M` write: breakpoints in the range keep their int3 and remember the new bytes."""
        self.mem.check(gpa, len(data))
        inside = [at for at in self.saved if gpa <= at < gpa + len(data)]
        for at in inside:
            self.saved[at] = data[at - gpa:at - gpa + 1]
        if inside or self.mem.is_readonly(gpa) or self.mem.is_readonly(gpa + len(data) - 1):
            patched = bytearray(data)
            for at in inside:
                patched[at - gpa] = INT3[0]
            self._poke(gpa, bytes(patched))
        else:
            with self.mem.writable_view(gpa, len(data)) as view:
                view[:] = data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
