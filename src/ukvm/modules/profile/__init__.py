"""modules/profile: `--profile=FILE`: where the guest spends its time (docs/debugging.md).

A POSIX timer sends SIGPROF to the vCPU thread at a fixed rate (`--profile-rate=HZ`, default
DEFAULT_RATE) of wall-clock time. The signal makes KVM_RUN return (EINTR) and the run loop
continue with it; Python runs the handler on that thread first, which reads the vCPU's registers
(KVM_GET_REGS: the vCPU is out of KVM_RUN then) and walks the guest's frame-pointer chain through
GuestMemory's checked reads. The guest is stopped only for as long as that takes. A sample taken
while the tender itself was busy (a hypercall handler) gets the handler's name as its leaf,
`[ukvm] hvt_hc_poll`, above the guest's stack at the hypercall.

At the end (halt, fatal error or close) the samples are symbolized from the kernel's ELF symbol
table and written as folded stacks to FILE and as an SVG flame graph to FILE.svg. Both files are
opened at set-up and the timer armed then, before the sandbox, which allows the two writes and
nothing new (a signal and its return are allowed anyway).

Guests built with frame pointers (`ukvm build --cflags=-fno-omit-frame-pointer`) give whole call
stacks; others give the function the sample landed in and whatever of the chain checks out (each
return address must follow a call instruction in a known function, each frame lie above the last).
"""
from __future__ import annotations

import ctypes
import os
import _signal as signal
import struct
from time import perf_counter as _clock

from ukvm.errors import UkvmError, UsageError
from ukvm.machine.supervisor import SV_BASE, SV_CODE_END
from ukvm.modules import Module
from ukvm.options import Option, integer, text

DEFAULT_RATE = 200                # Hz; the bench's figure for its cost is in docs/debugging.md
MAX_RATE = 10000
MAX_DEPTH = 128
FRAME = struct.Struct("<QQ")      # saved rbp, return address
SIGEV_THREAD_ID = 4
CLOCK_MONOTONIC = 1


class _Sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("tid", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


def arm_thread_timer(rate: int, signo: int) -> None:
    """Deliver `signo` to the calling thread `rate` times a second (timer_create with
    SIGEV_THREAD_ID: only this thread is interrupted, never the ring's)."""
    import threading
    libc = ctypes.CDLL(None, use_errno=True)
    sev = _Sigevent(signo=signo, notify=SIGEV_THREAD_ID, tid=threading.get_native_id())
    timer = ctypes.c_void_p()
    if libc.timer_create(CLOCK_MONOTONIC, ctypes.byref(sev), ctypes.byref(timer)) != 0:
        raise UkvmError(f"profile: timer_create: {os.strerror(ctypes.get_errno())}")
    period = 1_000_000_000 // rate
    spec = _Itimerspec(period // 10**9, period % 10**9, period // 10**9, period % 10**9)
    if libc.timer_settime(timer, 0, ctypes.byref(spec), None) != 0:
        raise UkvmError(f"profile: timer_settime: {os.strerror(ctypes.get_errno())}")


def follows_call(code: bytes) -> bool:
    """Whether the bytes just before a return address end with a call: e8 rel32, or ff /2 in
    its register, [reg], [reg+disp8], [rip+disp32]/[reg+disp32] forms (with or without SIB)."""
    if len(code) >= 5 and code[-5] == 0xE8:
        return True
    for back in (2, 3, 4, 6, 7):
        if len(code) >= back and code[-back] == 0xFF and (code[-back + 1] >> 3) & 7 == 2:
            return True
    return False


class Sampler:
    """Takes samples on the vCPU thread; keeps raw address stacks until the end."""

    def __init__(self, vm: VM, symbols):
        import collections    # only when profiling: it costs every start-up ~1.5 ms otherwise
        self.counter = collections.Counter
        self.vm, self.vcpu, self.mem, self.symbols = vm, vm.vcpu, vm.mem, symbols
        self.samples: collections.Counter = collections.Counter()
        self.running = False
        self._returns: dict[int, bool] = {}
        self._loop_code = type(vm)._run_loop.__code__
        self._busy = False
        self.seconds = 0.0                  # spent taking samples, for the closing line

    def on_signal(self, _signum, frame) -> None:
        if not self.running or self._busy:     # a signal inside a sample is dropped
            return
        self._busy = True
        t0 = _clock()
        try:
            regs = self.vcpu.get_regs()
            self.samples[(self.walk(regs.rip, regs.rbp, regs.rsp), self.tender_frame(frame))] += 1
        except Exception:        # noqa: BLE001 - a failed sample must never end the guest
            pass
        finally:
            self.seconds += _clock() - t0
            self._busy = False

    def tender_frame(self, frame) -> str | None:
        """None if the vCPU thread was in the run loop itself (the guest running), else the name
        of the function the loop had called (a hypercall handler)."""
        below = None
        while frame is not None:
            if frame.f_code is self._loop_code:
                return below.f_code.co_name if below is not None else None
            below, frame = frame, frame.f_back
        return "run"

    def walk(self, rip: int, rbp: int, rsp: int) -> tuple[int, ...]:
        frames = [rip]
        low, limit = rsp, self.mem.limit
        for _ in range(MAX_DEPTH):
            if rbp & 7 or not low <= rbp < limit - FRAME.size:
                break
            try:
                next_rbp, ret = self.mem.unpack(FRAME, rbp)
            except UkvmError:
                break
            if not self._is_return(ret):
                break
            frames.append(ret)
            low, rbp = rbp + FRAME.size, next_rbp
        return tuple(frames)

    def _is_return(self, addr: int) -> bool:
        known = self._returns.get(addr)
        if known is None:
            known = False
            if self.symbols.lookup(addr - 1) is not None and addr >= 8:
                try:
                    known = follows_call(self.mem.read(addr - 7, 7))
                except UkvmError:
                    pass
            if len(self._returns) < 1 << 16:
                self._returns[addr] = known
        return known

    def stacks(self) -> dict[tuple[str, ...], int]:
        """Symbolized, outermost frame first."""
        out: collections.Counter = self.counter()
        for (frames, tender), n in self.samples.items():
            names = [self._name(frames[0])] + [self.symbols.name_of(ret - 1) for ret in frames[1:]]
            names.reverse()
            if tender is not None:
                names.append(f"[ukvm] {tender}")
            out[tuple(names)] += n
        return out

    def _name(self, rip: int) -> str:
        if self.vm.supervised and SV_BASE <= rip < SV_CODE_END:
            return "[ukvm supervisor]"
        return self.symbols.name_of(rip)


class ProfileModule(Module):
    name = "profile"
    options = (
        Option("profile", "sample the guest's stack; folded stacks to FILE, a flame graph to FILE.svg",
               text(4096, spaces=True), metavar="FILE"),
        Option("profile-rate", "samples a second of wall-clock time", integer(1, MAX_RATE), metavar="HZ",
               default=str(DEFAULT_RATE)),
    )

    def __init__(self, manifest):
        super().__init__(manifest)
        self.path: str | None = None
        self.rate = DEFAULT_RATE
        self.fds: list[int] = []
        self.sampler: Sampler | None = None
        self.written = False

    def set_option(self, opt: str, _device, value) -> bool:
        if opt == "profile":
            self.path = value
        else:
            self.rate = value
        return True

    def setup(self, vm: VM) -> None:
        if self.path is None:
            return
        for path in (self.path, self.path + ".svg"):
            try:
                self.fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
            except OSError as e:
                raise UsageError(f"profile: cannot open {path}: {os.strerror(e.errno)}", show_usage=False) from None
        # Everything the end needs is imported now: after the sandbox no file can be opened.
        from ukvm.modules.profile import flamegraph
        from ukvm.modules.profile.symbols import Symbols
        self.flamegraph = flamegraph
        kernel = vm.kernel_path
        self.kernel_name = os.path.basename(kernel)
        self.sampler = Sampler(vm, Symbols.from_file(kernel))
        try:
            signal.signal(signal.SIGPROF, self.sampler.on_signal)
        except ValueError:
            raise UsageError("--profile: the VM must run on the main thread", show_usage=False) from None
        arm_thread_timer(self.rate, signal.SIGPROF)

    def before_run(self, vm: VM) -> None:
        if self.sampler is not None:
            self.sampler.running = True

    def host_fds(self) -> list[tuple[int, str]]:
        return [(fd, "write") for fd in self.fds]

    def on_halt(self, vm: VM) -> None:
        self._finish()

    def on_fatal(self, vm: VM) -> None:
        self._finish()

    def _finish(self) -> None:
        """Stop sampling (the timer stays armed: deleting it is a system call the sandbox does not
        allow, and the process ends soon) and write both files once."""
        if self.sampler is None or self.written:
            return
        self.sampler.running = False
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        self.written = True
        folded, svg = self.flamegraph.folded, self.flamegraph.svg
        stacks = self.sampler.stacks()
        total = sum(stacks.values())
        title = f"{self.kernel_name}: {total} samples at {self.rate} Hz"
        for fd, text in zip(self.fds, (folded(stacks), svg(stacks, title))):
            data = text.encode()
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError as e:
                self.warn(f"profile: write failed: {os.strerror(e.errno)}")
        per = self.sampler.seconds / total * 1e6 if total else 0.0
        self.warn(f"profile: {total} samples written to {self.path} and {self.path}.svg ({per:.0f} us a sample)")

    def close(self) -> None:
        self._finish()
        for fd in self.fds:
            os.close(fd)
        self.fds = []
