"""modules/gdb/stub.py: the GDB remote-serial-protocol stub behind `--gdb` (modules/gdb/__init__.py; hvt-abi.md 16;
docs/debugging.md). Imported only when --gdb is given. Over 400 lines: one class, whose session
state (stop frame, breakpoints, stepping) every command touches; packet framing (protocol.py) and
the CPL3 trap frame and int3s (traps.py) are already apart.

The tender waits for one debugger on 127.0.0.1:PORT before the guest's first instruction, then
serves it: registers (general, segments, FS/GS bases, x87 and SSE, described by a target XML),
memory (every address checked against guest memory), breakpoints and watchpoints in the four
debug registers, single step, continue, Ctrl-C, and the guest's exit as `W`/`X`.

kvm_pvm decides the shape. Guest code at CPL0 is single-stepped and hits debug-register
breakpoints with KVM_EXIT_DEBUG, but an `int3` there ends in an internal error: in a CPL0 session
(--x-guest-cpl=0, or a ukvm runtime too old to report traps) gdb's breakpoints (Z0 and Z1) live in
the four debug registers. At CPL3 a #DB or #BP does not leave the guest: the CPL0 code beside it
(the supervisor, or the ukvm runtime) reports them at UKVM_DEBUG_PORT with the registers it saved
(traps.py). There breakpoints are int3 in guest text (as many as wanted), a step sets the trap
flag, and a write watchpoint single-steps the guest and compares (the debug registers' data
breakpoints are not delivered for CPL3 code on kvm_pvm; docs/debugging.md).
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from ukvm.errors import GuestMemoryError, UkvmError, UsageError
from ukvm.kvm import abi
from ukvm.machine import signals
from ukvm.machine.vcpu import host_emulates_cpl0
from ukvm.modules.gdb.protocol import (GPRS, LAYOUT, MAX_PACKET, SEGMENTS, X87_CTRL, PacketReader, checksum,
                                       escape, target_xml, unescape)
from ukvm.modules.gdb.traps import RFLAGS_TF, SoftwareBreakpoints, TrapFrame, enable_reports

__all__ = ["GdbStub", "LAYOUT", "PacketReader", "checksum", "escape", "target_xml", "unescape"]

SIGINT, SIGKILL = 2, 9
DR7_GLOBAL_EXACT = 0x600           # GE and bit 10, as hardware expects them set
DR_TYPE = {0: 0, 1: 0, 2: 1, 4: 3}  # Z type -> DR7 R/W bits: exec, exec, write, read/write
DR_LEN = {1: 0, 2: 1, 4: 3, 8: 2}

def lost() -> UkvmError:
    return UkvmError("GDB: Exiting as we could not receive the next command from the debugger.")


class GdbStub:
    """One debugger session for `vm`: connect() waits for gdb, serve() answers it at each stop."""

    def __init__(self, vm: VM, warn=print):
        self.vm = vm
        self.warn = warn
        self.enabled = True
        self.sock = None
        self.reader = PacketReader()
        self.pending: list[bytes] = []
        self.hw: dict[tuple[int, int, int], int] = {}     # (type, addr, len) -> references
        self.stepping = False
        self.last_stop = b"S05"
        self._watcher = None
        self._running = None          # a threading.Event once connected
        self._closing = False
        self.data_breakpoints_unusable = False
        # CPL3 sessions (traps.py): the frame of the debug stop being served, int3 breakpoints,
        # and write watchpoints served by stepping: (addr, len) -> the bytes last seen.
        self.cpl3 = vm.guest_cpl == 3
        self.frame: TrapFrame | None = None
        self.sw: SoftwareBreakpoints | None = None
        self.watches: dict[tuple[int, int], bytes] = {}
        self.watch_steps = 0                  # instructions stepped for watchpoints, and their time
        self.watch_seconds = 0.0
        self._watch_t0 = None

    # --- set-up: wait for the debugger ---------------------------------------------------------
    def connect(self, port: int) -> None:
        vm = self.vm
        self._running = threading.Event()
        self.data_breakpoints_unusable = host_emulates_cpl0()    # now: the sandbox forbids stat later
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(1)
            self.warn("Waiting for a debugger. Connect to it like this:")
            self.warn(f'\tgdb --ex="target remote localhost:{listener.getsockname()[1]}" {vm.kernel_path}')
            with signals.unblocked():          # SIGINT/SIGTERM end the wait (machine/signals.py)
                self.sock, peer = listener.accept()
        except OSError as e:
            raise UsageError(f"gdb: cannot wait for a debugger on port {port}: {os.strerror(e.errno)}",
                             show_usage=False) from None
        finally:
            listener.close()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.warn(f"Connection from debugger at {peer[0]}")
        vm.hypercalls.on_debug_exit = self.on_debug_exit
        vm.on_interrupt = self.on_interrupt
        if self.cpl3:
            self.sw = SoftwareBreakpoints(vm.mem)
            enable_reports(vm)
            vm.hypercalls.on_debug_port = self.on_debug_port
        self._watcher = threading.Thread(target=self._watch_for_ctrl_c, name="ukvm-gdb", daemon=True)
        self._watcher.start()

    def sandbox_needs(self, vm) -> Needs:
        """The debugger's socket, and the vCPU state a debugger reads and changes."""
        from ukvm.sandbox.needs import Needs
        needs = Needs()
        if self.sock is not None:
            needs.on_fds(("sendto", "recvfrom"), {self.sock.fileno()})
            needs.allow("pselect6")           # the Ctrl-C watcher's bounded wait on the socket
            needs.ioctl({vm.vcpu.fd}, abi.KVM_GET_SREGS, abi.KVM_SET_REGS, abi.KVM_GET_FPU, abi.KVM_SET_GUEST_DEBUG)
        if self.sw is not None:        # int3 written into guest text through /proc/self/mem
            needs.on_fds(("pwritev2",), {self.sw.fd})
        return needs

    # --- the protocol --------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        data = escape(payload)
        try:
            with signals.unblocked():          # a debugger that stops reading: a signal still ends it
                self.sock.sendall(b"$" + data + b"#" + checksum(data))
        except OSError:
            raise lost() from None

    def _next_packet(self) -> bytes:
        while not self.pending:
            try:
                with signals.unblocked():
                    data = self.sock.recv(4096)
                if not data:
                    raise lost()
                packets, bad = self.reader.feed(data)
                acks = b"-" * bad + b"+" * sum(1 for p in packets if p != b"\x03")
                if acks:
                    with signals.unblocked():
                        self.sock.sendall(acks)
            except OSError:
                raise lost() from None
            self.pending += packets
        return self.pending.pop(0)

    def serve(self, stop: bytes) -> None:
        """Report a stop and answer commands until the debugger resumes the guest."""
        self.last_stop = stop
        self._send(stop)
        while True:
            packet = self._next_packet()
            if packet == b"\x03":
                continue                                  # already stopped
            reply = self.command(packet)
            if reply is None:                             # resume
                if self.watches and not self.stepping:
                    self._watch_t0 = time.perf_counter()
                self._resume()
                self._running.set()
                return
            self._send(reply)

    def command(self, p: bytes) -> bytes | None:
        """The reply to one packet, or None when the guest is to run."""
        try:
            kind = p[:1]
            if p.startswith(b"qSupported"):
                return b"PacketSize=%x;qXfer:features:read+;hwbreak+%s" % (
                    MAX_PACKET, b";swbreak+" if self.cpl3 else b"")
            if p.startswith(b"qXfer:features:read:target.xml:"):
                off, length = (int(x, 16) for x in p.split(b":")[4].split(b","))
                xml = target_xml()
                chunk = xml[off:off + min(length, MAX_PACKET - 8)]
                return (b"l" if off + len(chunk) >= len(xml) else b"m") + chunk
            if p == b"qAttached":
                return b"1"
            if p == b"qfThreadInfo":
                return b"m1"
            if p == b"qsThreadInfo":
                return b"l"
            if p == b"qC":
                return b"QC1"
            if p.startswith(b"H") or p.startswith(b"qSymbol"):
                return b"OK"
            if p.startswith(b"T"):
                return b"OK"
            if kind == b"?":
                return self.last_stop
            if kind == b"g":
                return self.read_registers().hex().encode()
            if kind == b"G":
                self.write_registers(bytes.fromhex(p[1:].decode()))
                return b"OK"
            if kind == b"p":
                n = int(p[1:], 16)
                return self.register_bytes(n).hex().encode() if 0 <= n < len(LAYOUT) else b"E01"
            if kind == b"m":
                addr, length = (int(x, 16) for x in p[1:].split(b","))
                data = self.vm.mem.read(addr, min(length, (MAX_PACKET - 4) // 2))
                return (self.sw.hide(addr, data) if self.sw else data).hex().encode()
            if kind == b"M":
                where, data = p[1:].split(b":", 1)
                addr, length = (int(x, 16) for x in where.split(b","))
                raw = bytes.fromhex(data.decode())
                if len(raw) != length:
                    return b"E01"
                if self.sw is not None:
                    self.sw.write(addr, raw)
                    return b"OK"
                with self.vm.mem.writable_view(addr, length) as view:
                    view[:] = raw
                return b"OK"
            if kind in (b"c", b"s"):
                if len(p) > 1 and self.frame is not None:
                    self.frame.regs["rip"] = int(p[1:], 16)
                elif len(p) > 1:
                    regs = self.vm.vcpu.get_regs()
                    regs.rip = int(p[1:], 16)
                    self.vm.vcpu.set_regs(regs)
                self.stepping = kind == b"s"
                return None
            if kind in (b"Z", b"z"):
                fields = p[1:].split(b";")[0].split(b",")
                if len(fields) != 3:
                    return b"E02"
                ztype, addr, length = (int(x, 16) for x in fields)
                return self.breakpoint(kind == b"Z", ztype, addr, length)
            if kind == b"k":
                raise UkvmError("gdb: the debugger killed the guest")
            if kind == b"D":
                if self.sw is not None:
                    self.sw.remove_all()
                    enable_reports(self.vm, on=False)
                self.watches.clear()
                self.hw.clear()
                self.stepping = False
                self.enabled = False
                self._send(b"OK")
                self._apply_debug()
                return None
        except GuestMemoryError:
            return b"E01"
        except (ValueError, IndexError):
            return b"E02"
        return b""

    # --- registers -----------------------------------------------------------------------------
    def _values(self) -> dict[str, bytes]:
        r, s, f = self.vm.vcpu.get_regs(), self.vm.vcpu.get_sregs(), self.vm.vcpu.get_fpu()
        v = {name: struct.pack("<Q", getattr(r, name)) for name in GPRS + ("rip",)}
        v["eflags"] = struct.pack("<I", r.rflags & 0xFFFFFFFF)
        for name in SEGMENTS:
            v[name] = struct.pack("<I", getattr(s, name).selector)
        for i in range(8):
            v[f"st{i}"] = bytes(f.fpr[16 * i:16 * i + 10])
        ftag = sum((0 if f.ftwx >> i & 1 else 3) << 2 * i for i in range(8))   # abridged -> full tag word
        ctrl = (f.fcw, f.fsw, ftag, f.last_ip >> 32, f.last_ip & 0xFFFFFFFF, f.last_dp >> 32,
                f.last_dp & 0xFFFFFFFF, f.last_opcode)
        for name, value in zip(X87_CTRL, ctrl):
            v[name] = struct.pack("<I", value & 0xFFFFFFFF)
        for i in range(16):
            v[f"xmm{i}"] = bytes(f.xmm[16 * i:16 * i + 16])
        v["mxcsr"] = struct.pack("<I", f.mxcsr)
        v["fs_base"], v["gs_base"] = struct.pack("<Q", s.fs.base), struct.pack("<Q", s.gs.base)
        if self.frame is not None:        # a CPL3 stop: the vCPU sits in the CPL0 code reporting it
            fr = self.frame.regs
            v.update({name: struct.pack("<Q", fr[name]) for name in GPRS + ("rip",)})
            v["eflags"] = struct.pack("<I", fr["rflags"] & 0xFFFFFFFF)
            v["cs"], v["ss"] = struct.pack("<I", fr["cs"] & 0xFFFF), struct.pack("<I", fr["ss"] & 0xFFFF)
        return v

    def read_registers(self) -> bytes:
        v = self._values()
        return b"".join(v[name] for name, _ in LAYOUT)

    def register_bytes(self, n: int) -> bytes:
        return self._values()[LAYOUT[n][0]]

    def write_registers(self, data: bytes) -> None:
        """G: the general registers, RIP and RFLAGS (the rest of the block is ignored)."""
        need = sum(size for _, size in LAYOUT[:18])
        if len(data) < need:
            raise ValueError("short G packet")
        values = {}
        off = 0
        for name, size in LAYOUT[:18]:
            values[name] = int.from_bytes(data[off:off + size], "little")
            off += size
        values["rflags"] = values.pop("eflags") | 2
        if self.frame is not None:
            self.frame.regs.update(values)
            return
        r = self.vm.vcpu.get_regs()
        for name, value in values.items():
            setattr(r, name, value)
        self.vm.vcpu.set_regs(r)

    # --- breakpoints, stepping, stops ----------------------------------------------------------
    def breakpoint(self, insert: bool, kind: int, addr: int, length: int = 1) -> bytes:
        # At CPL3: Z0 as int3; Z2 by single-stepping where the host does not deliver data
        # breakpoints (kvm_pvm), else in the debug registers like every Z1-Z4.
        if self.cpl3 and (kind == 0 or (kind == 2 and self.data_breakpoints_unusable)):
            return self._cpl3_breakpoint(insert, kind, addr, length)
        # Data breakpoints in the debug registers never fire for the emulated CPL0 code of
        # kvm_pvm (probed: docs/debugging.md): declining Z2-Z4 makes gdb watch by single-stepping.
        if kind not in DR_TYPE or (kind >= 2 and (self.data_breakpoints_unusable or length not in DR_LEN)):
            return b""
        key = (DR_TYPE[kind], addr, 1 if kind < 2 else length)
        if insert:
            self.vm.mem.check(addr, key[2])
            if key not in self.hw and len(self.hw) == 4:
                return b"E01"                            # four debug registers
            self.hw[key] = self.hw.get(key, 0) + 1
        elif key in self.hw:
            self.hw[key] -= 1
            if not self.hw[key]:
                del self.hw[key]
        return b"OK"

    def _cpl3_breakpoint(self, insert: bool, kind: int, addr: int, length: int) -> bytes:
        """Z0: an int3 in guest text. Z2: a write watchpoint, checked after every instruction
        while the guest runs (single steps)."""
        if kind == 0:
            if insert:
                self.sw.insert(addr)
            else:
                self.sw.remove(addr)
            return b"OK"
        if insert:
            self.watches[(addr, length)] = self.vm.mem.read(addr, length)
        else:
            self.watches.pop((addr, length), None)
        return b"OK"

    def _resume(self) -> None:
        """Let the guest go on: a CPL3 stop's frame goes back with the trap flag set for a step
        (or for watching), else cleared; a stop at the vCPU is stepped with the trap flag at CPL3
        and with KVM's single-step at CPL0."""
        tf = self.cpl3 and self.enabled and (self.stepping or bool(self.watches))
        kvm_step = self.stepping
        if self.frame is not None:
            r = self.frame.regs
            r["rflags"] = r["rflags"] | RFLAGS_TF if tf else r["rflags"] & ~RFLAGS_TF
            self.frame.write_back()
            self.frame = None
            kvm_step = False
        elif self.cpl3:
            at_cpl3 = self.vm.vcpu.get_sregs().cs.selector & 3 == 3
            regs = self.vm.vcpu.get_regs()
            wanted = regs.rflags | RFLAGS_TF if tf and at_cpl3 else regs.rflags & ~RFLAGS_TF
            if wanted != regs.rflags:
                regs.rflags = wanted
                self.vm.vcpu.set_regs(regs)
            kvm_step = tf and not at_cpl3
        self._apply_debug(kvm_step)

    def _watch_hit(self) -> int | None:
        """The first watched address whose bytes changed since last seen."""
        for (addr, length), seen in self.watches.items():
            now = self.vm.mem.read(addr, length)
            if now != seen:
                self.watches[(addr, length)] = now
                return addr
        return None

    def on_debug_port(self, gpa: int) -> None:
        """A #DB or int3 of the guest at CPL3, reported with the address of its saved registers."""
        self._running.clear()
        frame = self.frame = TrapFrame(self.vm, gpa)
        if frame.is_breakpoint():
            at = frame.int3_address()
            if self.sw is not None and at in self.sw.saved:
                frame.regs["rip"] = at
                return self.serve(b"T05swbreak:;")
            frame.regs["rip"] = at + 1        # the guest's own int3: stopped after it, as a CPU does
            return self.serve(b"T05")
        self._after_step()

    def _after_step(self) -> None:
        if self.watches and not self.stepping:
            self.watch_steps += 1
            hit = self._watch_hit()
            if hit is None:              # nothing changed: step on, unseen by the debugger
                self._resume()
                self._running.set()
                return
            if self._watch_t0 is not None:
                self.watch_seconds += time.perf_counter() - self._watch_t0
                self._watch_t0 = None
            return self.serve(b"T05watch:%x;" % hit)
        self.serve(b"T05")

    def _apply_debug(self, kvm_step: bool | None = None) -> None:
        if kvm_step is None:
            kvm_step = self.stepping
        regs = [0] * 8
        dr7 = DR7_GLOBAL_EXACT
        for i, (rw, addr, length) in enumerate(self.hw):
            regs[i] = addr
            dr7 |= 2 << 2 * i | rw << 16 + 4 * i | DR_LEN[length] << 18 + 4 * i
        regs[7] = dr7
        control = 0
        # CPL3 sessions ask KVM for nothing they do not need: on hardware KVM, guest debugging
        # would intercept every #DB, the supervisor's and runtime's reports included.
        if self.enabled and (not self.cpl3 or self.hw or kvm_step):
            control = abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP
            if kvm_step:
                control |= abi.KVM_GUESTDBG_SINGLESTEP
        self.vm.vcpu.set_guest_debug(control, regs)

    def on_debug_exit(self, run) -> None:
        """KVM_EXIT_DEBUG: a step, a breakpoint or a watchpoint."""
        self._running.clear()
        self.frame = None
        _exc, _pad, _pc, dr6, _dr7 = abi.KVM_RUN_DEBUG.unpack_from(run, abi.KVM_RUN_EXIT_OFFSET)
        if self.cpl3 and not dr6 & 0xF:       # a step: the same rules as a reported one
            return self._after_step()
        stop = b"T05"
        for i, (rw, addr, _length) in enumerate(self.hw):
            if dr6 >> i & 1 and rw:
                stop += b"%swatch:%x;" % (b"" if rw == 1 else b"a", addr)
                break
        self.serve(stop)

    def on_interrupt(self) -> None:
        """The vCPU stopped for Ctrl-C."""
        self._running.clear()
        self.serve(b"S%02x" % SIGINT)

    def _watch_for_ctrl_c(self) -> None:
        """While the guest runs, a Ctrl-C from the debugger stops the vCPU."""
        while not self._closing:
            if not self._running.wait(0.2):
                continue
            try:
                ready = select.select([self.sock], [], [], 0.2)[0]
                if not ready or not self._running.is_set():
                    continue
                data = self.sock.recv(4096, socket.MSG_PEEK)
            except OSError:
                return
            if not data:
                return
            if b"\x03" in data:
                self.sock.recv(data.index(b"\x03") + 1)
                self._running.clear()
                self.vm.interrupt()

    def on_halt(self, vm: VM) -> None:
        if self.enabled and self.sock is not None:
            self._running.clear()
            self._send(b"W%02x" % (vm.halt_status & 0xFF))

    def on_fatal(self, vm: VM) -> None:
        if self.enabled and self.sock is not None:
            self._running.clear()
            try:
                self._send(b"X%02x" % SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        self._closing = True
        if self.watch_steps and self.watch_seconds:
            self.warn(f"gdb: watchpoints single-stepped {self.watch_steps} instructions "
                      f"({self.watch_seconds / self.watch_steps * 1e6:.0f} us each)")
        if self.sw is not None:
            self.sw.close()
        if self._watcher is not None:
            self._watcher.join(1)
            self._watcher = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
