"""CPL3 mode (issue 7): ukvm-built guests run their code at CPL3 where the tender offers it,
and at CPL0 where it does not (as on solo5-hvt); Solo5-built guests see the hvt state unchanged."""
import os
import struct

import pytest

from conftest import needs_kvm, run_hvt
from ukvm import hvt_abi as hvt
from ukvm.machine.elf import ElfFile
from ukvm.machine.vm import VM, Kernel

pytestmark = needs_kvm
ON_PVM = os.path.exists("/sys/module/kvm_pvm")


def cpu_flag(name):
    with open("/proc/cpuinfo") as f:
        return any(name in line.split() for line in f if line.startswith("flags"))


def test_default_build_runs_at_cpl3(guest):
    p = run_hvt("--mem=8", guest("test_cpl", cpl0=False))
    assert p.returncode == 0, p.output
    assert "CPL 3\n" in p.output


def test_cpl0_build_runs_at_cpl0(guest):
    p = run_hvt("--mem=8", guest("test_cpl"))
    assert p.returncode == 0, p.output
    assert "CPL 0\n" in p.output


def test_privileged_instruction_traps_at_cpl3(guest):
    p = run_hvt("--mem=8", guest("test_cpl", cpl0=False), "priv")
    assert p.returncode == 255, p.output
    assert "Solo5: trap: type=#GP" in p.output and "ABORT" in p.output
    assert "allowed" not in p.output
    ok = run_hvt("--mem=8", guest("test_cpl"), "priv")
    assert ok.returncode == 0 and "privileged instruction allowed" in ok.output


def test_note_records_the_mode(guest):
    with ElfFile(str(guest("test_cpl", cpl0=False))) as elf:
        assert elf.ukvm_mode() == 3        # CPL3, and the runtime reports debug traps (--gdb)
    with ElfFile(str(guest("test_cpl"))) as elf:
        assert elf.ukvm_mode() == 0


def _boot(path, mode=None, args=()):
    kernel = Kernel(str(path))
    if mode is not None:
        kernel.mode = mode      # what a tender that ignores the ukvm note (solo5-hvt) does
    vm = VM(kernel, list(args), mem=8 << 20, warn=lambda m: None)
    return kernel, vm


def test_tender_state_for_each_kind_of_guest(guest):
    for path, cpl3 in ((guest("test_cpl", cpl0=False), True), (guest("test_cpl"), False)):
        kernel, vm = _boot(path)
        try:
            pml4 = struct.unpack("<Q", vm.mem.host_read(hvt.HVT_PML4_BASE, 8))[0]
            features = struct.unpack_from("<I", vm.mem.host_read(hvt.HVT_BOOT_INFO_BASE + 40, 4))[0]
            cr4 = vm.vcpu.get_sregs().cr4
        finally:
            vm.close()
            kernel.close()
        if cpl3:
            assert pml4 == 0x3007 and features & hvt.UKVM_FEATURE_CPL3 and cr4 & (1 << 16)
        else:   # exactly the hvt entry state
            assert pml4 == 0x3003 and features == 0 and cr4 == 0x620


def test_cpl3_build_falls_back_to_cpl0_without_the_offer(guest, capfd):
    # As on solo5-hvt: no user page tables, no feature bit; the runtime stays at CPL0.
    kernel, vm = _boot(guest("test_cpl", cpl0=False), mode=0)
    try:
        assert vm.run() == 0
    finally:
        vm.close()
        kernel.close()
    assert "CPL 0\n" in capfd.readouterr().out


@pytest.mark.parametrize("cflags", ["-O3", "-O3 -mavx2"])
def test_vectorised_code_runs_at_cpl3(guest, tmp_path, cflags):
    if "avx2" in cflags and not cpu_flag("avx2"):
        pytest.skip("host CPU has no AVX2")
    out = tmp_path / "vec.hvt"
    from conftest import GUESTS, ukvm
    assert ukvm("build", GUESTS / "test_vector.c", "-o", out, f"--cflags={cflags}").returncode == 0
    p = run_hvt("--mem=8", out)
    assert p.returncode == 0, p.output
    assert "SUCCESS" in p.output
    out0 = tmp_path / "vec0.hvt"
    assert ukvm("build", GUESTS / "test_vector.c", "-o", out0, f"--cflags={cflags}", "--cpl0").returncode == 0
    p0 = run_hvt("--mem=8", out0)
    if ON_PVM:
        assert p0.returncode == 1 and "internal error exit: suberror=0x1" in p0.output
    else:
        assert p0.returncode == 0 and "SUCCESS" in p0.output


def test_cpl0_build_runs_under_the_supervisor_when_asked(guest):
    # A --cpl0 image has no CPL3 drop of its own: --x-guest-cpl=3 runs it under the supervisor,
    # which emulates its start-up (lgdt, ltr, wrmsr, ...) and its `cli`.
    p = run_hvt("--mem=8", "--x-guest-cpl=3", guest("test_cpl"), "priv")
    assert p.returncode == 0, p.output
    assert "CPL 3\n" in p.output and "privileged instruction allowed" in p.output
