"""KVM ABI: struct sizes and offsets, ioctl numbers (hvt-abi.md appendix A)."""
import ctypes

import pytest

from ukvm import hvt_abi as hvt
from ukvm.kvm import abi


@pytest.mark.parametrize("ctype,size", [
    (abi.kvm_regs, 144), (abi.kvm_sregs, 312), (abi.kvm_segment, 24), (abi.kvm_dtable, 16),
    (abi.kvm_userspace_memory_region, 32), (abi.kvm_ioeventfd, 64), (abi.kvm_cpuid_entry2, 40),
    (abi.kvm_cpuid2, 8), (abi.kvm_fpu, 416)])
def test_struct_sizes(ctype, size):
    assert ctypes.sizeof(ctype) == size


@pytest.mark.parametrize("ctype,field,offset", [
    (abi.kvm_regs, "rdi", 40), (abi.kvm_regs, "rsp", 48), (abi.kvm_regs, "rip", 128),
    (abi.kvm_regs, "rflags", 136), (abi.kvm_sregs, "ldt", 168), (abi.kvm_sregs, "gdt", 192),
    (abi.kvm_sregs, "idt", 208), (abi.kvm_sregs, "cr0", 224), (abi.kvm_sregs, "cr3", 240),
    (abi.kvm_sregs, "cr4", 248), (abi.kvm_sregs, "efer", 264), (abi.kvm_sregs, "apic_base", 272),
    (abi.kvm_sregs, "interrupt_bitmap", 280), (abi.kvm_segment, "selector", 12),
    (abi.kvm_segment, "type", 14), (abi.kvm_segment, "unusable", 22), (abi.kvm_ioeventfd, "fd", 20),
    (abi.kvm_ioeventfd, "flags", 24)])
def test_field_offsets(ctype, field, offset):
    assert getattr(ctype, field).offset == offset


@pytest.mark.parametrize("name,number", [
    ("KVM_GET_API_VERSION", 0xAE00), ("KVM_CREATE_VM", 0xAE01), ("KVM_CHECK_EXTENSION", 0xAE03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04), ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05),
    ("KVM_CREATE_VCPU", 0xAE41), ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
    ("KVM_IOEVENTFD", 0x4040AE79), ("KVM_RUN", 0xAE80), ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82), ("KVM_GET_SREGS", 0x8138AE83), ("KVM_SET_SREGS", 0x4138AE84),
    ("KVM_GET_FPU", 0x81A0AE8C), ("KVM_SET_CPUID2", 0x4008AE90), ("KVM_GET_TSC_KHZ", 0xAEA3),
    ("KVM_SET_SIGNAL_MASK", 0x4004AE8B)])
def test_ioctl_numbers(name, number):
    assert getattr(abi, name) == number


def test_hvt_struct_sizes():
    assert hvt.hvt_boot_info.size == 56
    assert hvt.hvt_hc_walltime.size == 8
    assert hvt.hvt_hc_puts.size == 16
    assert hvt.hvt_hc_poll.size == 24
    assert hvt.hvt_hc_block_io.size == 40
    assert hvt.hvt_hc_net_io.size == 32
    assert hvt.hvt_hc_halt.size == 16


def test_kvm_run_io_layout():
    # direction u8 @32, size u8 @33, port u16 @34, count u32 @36, data_offset u64 @40
    assert abi.KVM_RUN_IO.size == 16
    raw = bytes(32) + bytes([1, 4]) + (0x501).to_bytes(2, "little") + (1).to_bytes(4, "little") \
        + (4096).to_bytes(8, "little")
    assert abi.KVM_RUN_IO.unpack_from(raw, 32) == (1, 4, 0x501, 1, 4096)
