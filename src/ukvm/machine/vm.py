"""vm.py: one hvt virtual machine: create, load, run, tear down (hvt-abi.md section 1).

A Kernel is an opened, ABI-checked unikernel with its manifest; it can boot many VMs. A VM owns
its KVM fds, guest memory and modules, and releases all of them in close(), so one process can
create and run VMs one after another without leaking anything. A VM made from a snapshot, and
its reset, are clone.py's.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import _signal as signal  # the C module behind `signal`, without its enum import
import _thread
import sys

from ukvm import hvt_abi as hvt
from ukvm.machine.elf import NOTE_MFT1, UKVM_MODE_CPL3, UKVM_MODE_DEBUG, ElfFile
from ukvm.errors import ElfError, KvmError, UkvmError, UsageError
from ukvm.machine.exits import HypercallTable, handle_exit, translation_fault
from ukvm.kvm import abi
from ukvm.kvm.ioctls import Kvm
from ukvm.machine import signals
from ukvm.machine.manifest import Manifest, type_name
from ukvm.machine.memory import GuestMemory
from ukvm.modules import Module, default_modules
from ukvm.modules.core import CoreModule
from ukvm.machine.vcpu import host_emulates_cpl0, setup_vcpu, write_gdt, write_page_tables
from ukvm.options import GUEST_CPL_CHOICES     # the options layer owns the spelling

# kvm_run from exit_reason (@8) through the I/O exit (@32): reason, direction, size, port, count,
# data_offset, in one unpack.
EXIT_IO = struct.Struct("<I20xBBHIQ")
EXIT_IO_OFFSET = abi.KVM_RUN_EXIT_REASON_OFFSET
KVM_EXIT_IO, KVM_EXIT_IO_OUT = abi.KVM_EXIT_IO, abi.KVM_EXIT_IO_OUT
PIO_BASE = hvt.HVT_HYPERCALL_PIO_BASE
FIRST_HANDLED_PORT = PIO_BASE + 1
HALT_PORT = PIO_BASE + hvt.HVT_HYPERCALL_HALT


def _stderr_warn(message: str) -> None:
    print(f"ukvm: {message}", file=sys.stderr, flush=True)


class Kernel:
    """A unikernel file whose ABI note and manifest have been checked (steps 2-3 of start-up)."""

    def __init__(self, path: str):
        self.path = path
        self.elf = ElfFile(path)
        try:
            self.elf.check_hvt_abi(hvt.HVT_ABI_VERSION)
            payload = self.elf.find_note(NOTE_MFT1)
            if payload is None:
                raise ElfError(f"{path}: No Solo5 manifest found in executable")
            self.manifest_payload = payload
            Manifest.parse(payload, path)
            self.mode = self.elf.ukvm_mode()
        except BaseException:
            self.elf.close()
            raise

    def manifest(self) -> Manifest:
        """A fresh copy of the manifest, for one VM's modules to fill in."""
        return Manifest.parse(self.manifest_payload, self.path)

    def close(self) -> None:
        self.elf.close()


def guest_memory_size(requested: int, with_net: bool, warn: Callable[[str], None]) -> int:
    """Allocation size A from the --mem request in bytes (hvt-abi.md 5.1)."""
    size = requested - requested % hvt.MEM_GRANULE
    if size == 0:
        size = hvt.MEM_GRANULE
    if size != requested:
        warn(f"adjusting memory to {size} bytes")
    if size > hvt.MEM_MAX:
        raise UsageError(f"guest memory size {size} bytes exceeds the max size {hvt.MEM_MAX} bytes",
                         show_usage=False)
    if with_net:
        size = min(size + hvt.HVT_RING_AREA, hvt.MEM_MAX)
    return size


def join_cmdline(args: Sequence[str]) -> bytes:
    cmdline = b" ".join(os.fsencode(a) for a in args)
    if len(cmdline) >= hvt.HVT_CMDLINE_SIZE:
        raise UsageError(f"Guest command line too long (max={hvt.HVT_CMDLINE_SIZE - 1} characters)",
                         show_usage=False)
    return cmdline


def guest_cpl_plan(note: int | None, choice: str) -> tuple[bool, bool]:
    """(runtime_cpl3, supervised) for an image's ukvm MODE note (None: Solo5-built) and
    --x-guest-cpl. A ukvm runtime that asks for CPL3 drops there itself; any other guest runs at
    CPL3 under the supervisor when asked to, or by default where the host emulates CPL0."""
    runtime_cpl3 = note is not None and bool(note & UKVM_MODE_CPL3) and choice != "0"
    supervised = not runtime_cpl3 and (choice == "3" or (choice == "auto" and note is None
                                                         and host_emulates_cpl0()))
    return runtime_cpl3, supervised


def debuggable_at_cpl3(note: int | None) -> bool:
    """Whether --gdb can keep this guest's code at CPL3: Solo5-built guests (the supervisor reports
    their #DB and int3) and ukvm runtimes whose MODE note says they report them."""
    return note is None or bool(note & UKVM_MODE_DEBUG)


class VM:
    """A VM booted from a Kernel. machine/clone.py's Clone is one made from a Snapshot instead;
    both are built by _construct (KVM objects, then _build, then the device check)."""

    def __init__(self, kernel: Kernel, args: Sequence[str] = (), mem: int = hvt.MEM_DEFAULT,
                 modules: list[Module] | None = None, warn: Callable[[str], None] = _stderr_warn,
                 guest_cpl: str = "auto"):
        if guest_cpl not in GUEST_CPL_CHOICES:
            raise ValueError(f"guest_cpl must be one of {GUEST_CPL_CHOICES}")
        self.kernel = kernel
        self.kernel_path, self.manifest_payload = kernel.path, kernel.manifest_payload
        self.guest_cpl_choice = guest_cpl
        self._boot_args, self._mem_request = args, mem
        self._construct(modules if modules is not None else default_modules(kernel.manifest()), warn)

    def _construct(self, modules: list[Module], warn: Callable[[str], None]) -> None:
        """The one place a VM is put together: state, KVM objects, memory and vCPU (_build: boot
        or restore), attached devices checked; everything released if any step fails."""
        self.modules = modules
        self.manifest = self.modules[0].manifest
        self.core = next(m for m in self.modules if isinstance(m, CoreModule))
        self.hypercalls = HypercallTable()
        self.warn = warn
        self._thread_error: UkvmError | None = None
        self._interrupted = False
        self._stop_requested = False
        self.on_interrupt: Callable[[], None] | None = None     # --gdb: a Ctrl-C stop
        self._run_thread: int | None = None
        self.stats = None                   # HypercallStats after enable_stats()
        self.kvm = self.vmfd = self.vcpu = self.mem = None
        try:
            self.kvm = Kvm()
            if self.kvm.check_extension(abi.KVM_CAP_USER_MEMORY) != 1:
                raise KvmError("KVM: host does not support KVM_CAP_USER_MEMORY")
            if self.kvm.check_extension(abi.KVM_CAP_GET_TSC_KHZ) != 1:
                raise KvmError("KVM: host does not support KVM_CAP_GET_TSC_KHZ")
            self.vmfd = self.kvm.create_vm()
            self.vcpu = self.vmfd.create_vcpu(self.kvm)
            signals.unblock_in_run(self.vcpu)
            self._build()
            self._check_attached()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        """Boot: load the kernel into fresh memory, set up the vCPU, the modules, boot info."""
        with_net = any(getattr(m, "needs_ring_area", False) for m in self.modules)
        size = guest_memory_size(self._mem_request, with_net, self.warn)
        self.mem = GuestMemory(size)
        self.vmfd.set_user_memory_region(0, 0, size, self.mem.host_addr)

        loaded = self.kernel.elf.load(self.mem)
        self.mem.advise_huge_pages(loaded.image_end)
        if with_net:
            # The top 2 MiB hold the network ring, outside what hypercall pointers may reach.
            self.mem.limit = size - hvt.HVT_RING_AREA
        self.ring_gpa = 0
        self.host_features = 0
        choice = self.guest_cpl_choice
        if any(getattr(m, "needs_cpl0", False) for m in self.modules) and not debuggable_at_cpl3(self.kernel.mode):
            choice = "0"          # --gdb with a runtime that cannot report debug traps (modules/gdb)
        runtime_cpl3, self.supervised = guest_cpl_plan(self.kernel.mode, choice)
        if self.supervised:
            from ukvm.machine import supervisor
            code = supervisor.image()
        write_page_tables(self.mem, user=runtime_cpl3 or self.supervised)
        write_gdt(self.mem)
        sregs = None
        if self.supervised:
            sregs = supervisor.install(self.mem, code)
            self._register_supervisor()
        if setup_vcpu(self.kvm, self.vcpu, loaded.entry, self.mem.limit, cpl3=runtime_cpl3, sregs=sregs):
            self.host_features |= hvt.UKVM_FEATURE_CPL3
        # The CPL the guest's code runs at: 3 under the supervisor or after the runtime's drop.
        self.guest_cpl = 3 if self.supervised or self.host_features & hvt.UKVM_FEATURE_CPL3 else 0
        tsc_hz = self.vcpu.tsc_khz() * 1000

        for module in self.modules:
            module.setup(self)
        self._write_boot_info(loaded.kernel_end, tsc_hz, join_cmdline(self._boot_args))

    def _register_supervisor(self) -> None:
        from ukvm.machine import supervisor
        self.hypercalls.report_port = (supervisor.SV_REPORT_PORT, lambda: supervisor.report_error(self.mem))

    # --- snapshots (snapshot.py, clone.py, docs/serve.md) --------------------------------------
    @staticmethod
    def from_snapshot(snap: Snapshot, modules: list[Module] | None = None,
                      warn: Callable[[str], None] = _stderr_warn) -> Clone:
        """A Clone (machine/clone.py) that goes on from `snap`; reset() brings it back there."""
        from ukvm.machine.clone import Clone
        return Clone(snap, modules, warn)

    def snapshot(self) -> Snapshot:
        """Capture this VM, stopped at a hypercall boundary (run() returned None)."""
        from ukvm.machine.snapshot import Snapshot, VcpuState, capture_memory
        if self._run_thread is not None:
            raise UkvmError("snapshot: the VM is running")
        for module in self.modules:
            module.quiesce(self)
        vcpu = VcpuState.capture(self.kvm, self.vcpu)
        return Snapshot(capture_memory(self.mem), 0, self.mem.size, self.mem.limit,
                        self.mem.protected_ranges(), vcpu, self.host_features, self.ring_gpa,
                        self.guest_cpl, self.supervised, self.manifest_payload,
                        {m.name: m.snapshot_state() for m in self.modules}, self.kernel_path)

    @property
    def stop_requested(self) -> bool:
        """request_stop() was called and this run has not ended yet (core's POLL asks)."""
        return self._stop_requested

    def request_stop(self) -> None:
        """Make run() return None at the next exit, from any thread; a guest waiting in POLL is
        woken, a spinning one stopped."""
        self._stop_requested = True
        # immediate_exit before the wake-up: the write lets the vCPU thread take the GIL, and
        # each POLL it then makes would return at once and re-enter the guest (measured: tens
        # of POLL exits per stopped run in serve) until the stopping thread got the GIL back.
        # Nothing the vCPU thread clears once stopped is set after the wake-up (the signal only
        # ends a KVM_RUN or POLL in progress; a late one is ignored).
        self.vcpu.run[abi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 1
        self.core.wake()
        self._signal_vcpu()

    def _check_attached(self) -> None:
        missing = [e for e in self.manifest.devices() if not e.attached]
        for e in missing:
            self.warn(f"Device '{e.name}' of type {type_name(e.type)} declared but not attached.")
        if missing:
            raise UsageError("All declared devices must be attached. See --help for syntax.", show_usage=False)

    def _write_boot_info(self, kernel_end: int, tsc_hz: int, cmdline: bytes) -> None:
        mft = self.manifest.pack()
        mft_gpa = hvt.HVT_BOOT_INFO_BASE + hvt.hvt_boot_info.size
        cmdline_gpa = mft_gpa + len(mft)
        info = hvt.hvt_boot_info.pack(self.mem.limit, kernel_end, tsc_hz, cmdline_gpa, mft_gpa,
                                      self.host_features, 0, self.ring_gpa)
        self.mem.host_write(hvt.HVT_BOOT_INFO_BASE, info + mft + cmdline + b"\0")

    def rip(self) -> int:
        return self.vcpu.get_regs().rip

    def fail_from_thread(self, error: UkvmError) -> None:
        """A helper thread (the ring server) hit a fatal error: stop the vCPU and raise it there."""
        self._thread_error = error
        self._stop_vcpu()

    def interrupt(self) -> None:
        """Stop the vCPU from another thread and call on_interrupt in the run loop (gdb's Ctrl-C)."""
        self._interrupted = True
        self._stop_vcpu()

    def _stop_vcpu(self) -> None:
        """Make KVM_RUN return EINTR, whether the vCPU thread is inside it now or enters it next."""
        self.vcpu.run[abi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 1
        self._signal_vcpu()

    def _signal_vcpu(self) -> None:
        thread = self._run_thread
        if thread is not None:
            try:
                signal.pthread_kill(thread, signal.SIGUSR1)
            except (ProcessLookupError, OSError):
                pass          # the run ended meanwhile; immediate_exit covers the next one

    def run(self) -> int | None:
        """Run the guest until it halts; returns the tender's exit status (guest status & 0xff),
        or None when request_stop() ended the run at a hypercall boundary."""
        try:   # only the main thread may install handlers; elsewhere thread errors wait for an exit
            old_usr1 = signal.signal(signal.SIGUSR1, lambda *_: None)
            in_main = True
        except ValueError:
            in_main = False
        # From another thread, signal only when someone (ukvm serve) installed a handler: the
        # default action would end the process.
        handler = old_usr1 if in_main else signal.getsignal(signal.SIGUSR1)
        if in_main or callable(handler):
            self._run_thread = _thread.get_ident()
        try:
            for module in self.modules:
                module.before_run(self)
            return self._run_loop()
        except UkvmError:
            for module in self.modules:
                module.on_fatal(self)
            raise
        finally:
            self._run_thread = None
            # A handler of someone else's goes back; the default action never does: a thread that
            # read _run_thread just before it was cleared may still send its kick (it would end
            # the process).
            if in_main and callable(old_usr1):
                signal.signal(signal.SIGUSR1, old_usr1)

    def _run_loop(self) -> int | None:
        # The hot path: one ioctl, one unpack of the exit, one list index, the handler. Every name
        # is a local: on kvm_pvm each KVM_RUN round trip gets dearer with every cache line and
        # page the tender touches between exits (docs/performance.md).
        run_area = self.vcpu.run
        ioctl, fd, kvm_run, get_errno = self.vcpu.run_ioctl, self.vcpu.fd, abi.KVM_RUN, ctypes.get_errno
        unpack_exit, unpack_gpa = EXIT_IO.unpack_from, hvt.U32.unpack_from
        table = self.hypercalls
        handlers = table.handlers
        is_readonly = self.mem.is_readonly
        while True:
            if ioctl(fd, kvm_run, 0) < 0:
                err = get_errno()
                if err == errno.EINTR:
                    signals.deliver()          # SIGINT/SIGTERM in `ukvm run`: its handler raises
                    if self._thread_error is not None:
                        raise self._thread_error from None
                    if self._stop_requested:
                        self.vcpu.run[abi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 0
                        return None
                    if self._interrupted:
                        self._interrupted = False
                        self.vcpu.run[abi.KVM_RUN_IMMEDIATE_EXIT_OFFSET] = 0
                        self.on_interrupt()
                    continue
                if err == errno.EFAULT:
                    raise translation_fault(self.rip())
                raise KvmError(f"KVM: ioctl (RUN) failed: {os.strerror(err)}")
            reason, direction, size, port, _count, data_offset = unpack_exit(run_area, EXIT_IO_OFFSET)
            if reason == KVM_EXIT_IO and direction == KVM_EXIT_IO_OUT and size == 4 \
                    and FIRST_HANDLED_PORT <= port < HALT_PORT:
                handler = handlers[port - PIO_BASE]
                if handler is not None:
                    handler(unpack_gpa(run_area, data_offset)[0])
                    continue
            halt_gpa = handle_exit(run_area, table, self.rip, is_readonly)   # HALT and the rest
            if halt_gpa is not None:
                return self._halt(halt_gpa)

    def enable_stats(self):
        """Count hypercalls and their handler times from now on (exits.HypercallStats)."""
        self.stats = self.hypercalls.enable_stats()
        return self.stats

    def _halt(self, gpa: int) -> int:
        if self.stats is not None:
            self.stats.count_halt()
        cookie, status = self.mem.unpack(hvt.hvt_hc_halt, gpa)
        if cookie:
            self.mem.check(cookie, hvt.HVT_HALT_COOKIE_MAX)
        self.halt_status, self.halt_cookie = status, cookie
        for module in self.modules:
            module.on_halt(self)
        return status & 0xFF

    def close(self) -> None:
        """Release everything; safe to call more than once and after a failed __init__."""
        errors: list[BaseException] = []
        for module in self.modules:
            try:
                module.close()
            except UkvmError as e:
                errors.append(e)
        for res in (self.vcpu, self.vmfd, self.kvm, self.mem):
            if res is not None:
                res.close()
        self.vcpu = self.vmfd = self.kvm = self.mem = None
        if errors:
            raise errors[0]

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
