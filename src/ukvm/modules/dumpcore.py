"""modules/dumpcore.py: `--dumpcore=DIR`: an ELF core file of the guest when it aborts, traps or
is ended by a fatal tender error (hvt-abi.md 15; docs/debugging.md).

The file is `DIR/core.solo5-hvt.PID` (the name tools written for solo5-hvt look for): an ELF
header, a PT_NOTE with one NT_PRSTATUS (the vCPU's registers, or the trap frame the guest passed
with its abort), and one PT_LOAD holding guest memory [0, M), written sparsely (all-zero stretches
stay holes). DIR is opened at set-up, before the sandbox; the sandbox then allows exactly one
kind of open: creating a new file in that directory (sandbox_needs).
"""
from __future__ import annotations

import os
import struct

from ukvm.errors import UkvmError, UsageError
from ukvm.modules import Module
from ukvm.options import Option, text

# The one open the sandbox allows once the guest runs (sandbox_needs): a new file, never an
# existing one.
CORE_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

ELF_HEADER = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III8s")
PRSTATUS_SIZE = 336
PRSTATUS_REGS_OFFSET = 112
# Linux x86_64 user_regs_struct order, as gdb reads NT_PRSTATUS.
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
             "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
             "ds", "es", "fs", "gs")
TRAP_FRAME = struct.Struct("<7Q")        # cr2, ec, rip, cs, rflags, rsp, ss (the halt cookie)
CHUNK = 64 << 10
PAGE = 4096
ET_CORE, EM_X86_64, PT_NOTE, PT_LOAD, NT_PRSTATUS = 4, 62, 4, 1, 1
PF_RWX = 7


class DumpcoreModule(Module):
    name = "dumpcore"
    options = (Option("dumpcore", "write a core file to DIR when the guest aborts, traps or fails",
                      text(4096, spaces=True), metavar="DIR"),)

    def __init__(self, manifest):
        super().__init__(manifest)
        self.dir: str | None = None
        self.dirfd = -1
        # `ukvm serve` (serve/server.py): each clone's dump gets a name of its own (by
        # connection), and dumps are bounded (a PerMinute shared by the clones).
        self.name_core = None            # () -> str
        self.may_dump = None             # () -> bool

    def set_option(self, _opt: str, _device, value: str) -> bool:
        self.dir = value
        return True

    def setup(self, vm: VM) -> None:
        if self.dir is None:
            return
        try:
            self.dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise UsageError(f"dumpcore: cannot open dir: {self.dir}: {os.strerror(e.errno)}", show_usage=False)
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise UsageError(f"dumpcore: dir not writable: {self.dir}", show_usage=False)
        self.core_name = f"core.solo5-hvt.{os.getpid()}"

    def sandbox_needs(self, vm: VM) -> Needs:
        """One kind of open: a new file in DIR with exactly CORE_OPEN_FLAGS; pwrite64 only to
        descriptors made after the filter (only that open can make one); the special registers."""
        from ukvm.kvm import abi
        from ukvm.sandbox.needs import Needs, arg_in, arg_not_in, open_fds
        needs = Needs()
        if self.dirfd >= 0:
            needs.when("openat", arg_in(0, {self.dirfd}), arg_in(2, {CORE_OPEN_FLAGS}))
            needs.when("pwrite64", arg_not_in(0, open_fds()))
            needs.ioctl({vm.vcpu.fd}, abi.KVM_GET_SREGS)
        return needs

    def on_halt(self, vm: VM) -> None:
        if self.dirfd >= 0 and vm.halt_status & 0xFF == 255:     # aborts and fatal traps
            self.dump(vm, vm.halt_cookie)

    def on_fatal(self, vm: VM) -> None:
        if self.dirfd >= 0:
            self.dump(vm, 0)

    def dump(self, vm: VM, cookie: int) -> None:
        name = self.name_core() if self.name_core is not None else self.core_name
        path = os.path.join(self.dir, name)
        if self.may_dump is not None and not self.may_dump():
            self.warn(f"dumpcore: {path} not written: the bound of cores a minute was reached")
            return
        try:
            fd = os.open(name, CORE_OPEN_FLAGS, 0o600, dir_fd=self.dirfd)
        except OSError as e:
            self.warn(f"dumpcore: open({path}): {os.strerror(e.errno)}")
            self.warn("dumpcore: error(s) dumping core, file may be incomplete")
            return
        self.warn(f"dumpcore: dumping guest core to: {path}")
        try:
            pages = write_core(fd, vm, cookie)
            self.warn(f"dumpcore: dumped {pages} pages of total {vm.mem.limit // PAGE} pages")
        except (OSError, UkvmError) as e:
            self.warn(f"dumpcore: {e}")
            self.warn("dumpcore: error(s) dumping core, file may be incomplete")
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1


class PerMinute:
    """At most `limit` events in any 60 seconds, across threads (serve's clones)."""

    def __init__(self, limit: int):
        import threading
        from collections import deque
        self.limit = limit
        self.times = deque()
        self.lock = threading.Lock()

    def take(self, _now=None) -> bool:
        import time
        now = time.monotonic() if _now is None else _now
        with self.lock:
            while self.times and now - self.times[0] >= 60:
                self.times.popleft()
            if len(self.times) >= self.limit:
                return False
            self.times.append(now)
            return True


def prstatus(vm: VM, cookie: int) -> bytes:
    """NT_PRSTATUS for the vCPU; with a trap frame (the guest's halt cookie) its RIP, CS, RFLAGS,
    RSP and SS are the ones of the faulting instruction."""
    r, s = vm.vcpu.get_regs(), vm.vcpu.get_sregs()
    regs = {name: getattr(r, name, 0) for name in USER_REGS}
    regs.update(eflags=r.rflags, orig_rax=0, cs=s.cs.selector, ss=s.ss.selector, ds=s.ds.selector,
                es=s.es.selector, fs=s.fs.selector, gs=s.gs.selector, fs_base=s.fs.base, gs_base=s.gs.base)
    if cookie:
        _cr2, _ec, rip, cs, rflags, rsp, ss = vm.mem.unpack(TRAP_FRAME, cookie)
        regs.update(rip=rip, cs=cs & 0xFFFF, eflags=rflags, rsp=rsp, ss=ss & 0xFFFF)
    elif vm.supervised:          # ended by a supervisor report: the guest's registers it saved
        from ukvm.machine.supervisor import reported_guest_regs
        regs.update(reported_guest_regs(vm.mem) or {})
    out = bytearray(PRSTATUS_SIZE)
    struct.pack_into(f"<{len(USER_REGS)}Q", out, PRSTATUS_REGS_OFFSET, *(regs[n] & (2**64 - 1) for n in USER_REGS))
    return bytes(out)


def write_core(fd: int, vm: VM, cookie: int) -> int:
    """Write the core to `fd`; returns the number of guest pages written (the rest are holes)."""
    size = vm.mem.limit
    note = NOTE_HEADER.pack(5, PRSTATUS_SIZE, NT_PRSTATUS, b"CORE") + prstatus(vm, cookie)
    note_off = ELF_HEADER.size + 2 * PHDR.size
    mem_off = (note_off + len(note) + PAGE - 1) // PAGE * PAGE
    header = ELF_HEADER.pack(b"\x7fELF", 2, 1, 1, 0, 0, ET_CORE, EM_X86_64, 1, 0, ELF_HEADER.size, 0, 0,
                             ELF_HEADER.size, PHDR.size, 2, 0, 0, 0)
    phdrs = (PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(note), len(note), 0) +
             PHDR.pack(PT_LOAD, PF_RWX, mem_off, 0, 0, size, size, PAGE))
    os.pwrite(fd, header + phdrs + note, 0)
    written = 0
    zero = bytes(CHUNK)
    for gpa in range(0, size, CHUNK):
        length = min(CHUNK, size - gpa)
        last = gpa + length == size
        chunk = vm.mem.host_view(gpa, length)             # None where the host cannot read
        if chunk is None:
            if last:
                os.pwrite(fd, zero[:PAGE], mem_off + size - PAGE)
            continue
        with chunk:
            if chunk != zero[:length] or last:           # the last chunk sets the file's size
                os.pwrite(fd, chunk, mem_off + gpa)
                written += length // PAGE
    return written

