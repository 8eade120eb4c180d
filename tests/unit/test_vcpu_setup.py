"""vCPU entry state and page tables (hvt-abi.md 5.3-6), checked without KVM."""
import struct

from ukvm import hvt_abi as hvt
from ukvm.machine.memory import GuestMemory
from ukvm.machine.vcpu import initial_sregs, write_gdt, write_page_tables


def q(mem, gpa):
    return struct.unpack("<Q", mem.host_read(gpa, 8))[0]


def test_page_tables_identity_map_whole_allocation():
    mem = GuestMemory(64 << 20)
    try:
        write_page_tables(mem)
        assert q(mem, 0x2000) == 0x3003
        assert [q(mem, 0x3000 + 8 * i) for i in range(4)] == [0x4003, 0x5003, 0x6003, 0x7003]
        assert q(mem, 0x4000) == 0x8003
        assert q(mem, 0x4000 + 8) == (2 << 20) | 0x83
        assert q(mem, 0x4000 + 8 * 31) == (31 << 21) | 0x83
        assert q(mem, 0x4000 + 8 * 32) == 0          # nothing at or above the allocation
        assert q(mem, 0x8000) == 0                   # zero page not present
        assert q(mem, 0x8000 + 8 * 0xF) == 0         # 0xf000 not present
        assert q(mem, 0x8000 + 8 * 0x10) == 0x10001  # boot info read-only
        assert q(mem, 0x8000 + 8 * 0xFF) == 0xFF001
        assert q(mem, 0x8000 + 8 * 0x100) == 0x100003
        assert q(mem, 0x8000 + 8 * 0x1FF) == 0x1FF003
    finally:
        mem.close()


def test_page_tables_at_4gib():
    mem = GuestMemory(4 << 30)
    try:
        write_page_tables(mem)
        assert q(mem, 0x4000 + 8 * 2047) == (2047 << 21) | 0x83
    finally:
        mem.close()


def test_gdt_and_sregs():
    mem = GuestMemory(2 << 20)
    try:
        write_gdt(mem)
        assert struct.unpack("<3Q", mem.host_read(0x1000, 24)) == (0, 0x00AF99000000FFFF, 0x00CF93000000FFFF)
    finally:
        mem.close()
    s = initial_sregs()
    assert (s.cr0, s.cr3, s.cr4, s.efer) == (0x80010021, 0x2000, 0x620, 0x500)
    assert (s.cs.selector, s.cs.type, s.cs.l, s.cs.db, s.cs.g, s.cs.limit) == (8, 9, 1, 0, 1, 0xFFFFFFFF)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        assert (seg.selector, seg.type, seg.db, seg.s, seg.present) == (0x10, 3, 1, 1, 1)
    assert (s.tr.type, s.tr.present, s.ldt.unusable) == (11, 1, 1)
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (hvt.HVT_GDT_BASE, 23, 0, 0)


def test_user_page_tables_add_only_the_us_bit():
    plain, user = GuestMemory(8 << 20), GuestMemory(8 << 20)
    try:
        write_page_tables(plain)
        write_page_tables(user, user=True)
        for gpa in (0x2000, 0x3000, 0x4000, 0x4008, 0x8080, 0x8800):
            assert q(user, gpa) == q(plain, gpa) | 0x4
        assert q(user, 0x8000) == 0            # not-present entries stay empty
    finally:
        plain.close()
        user.close()
