"""The CPL3 supervisor's tender side: layout agreement with the C code, the tables the tender
writes, the mode choice, and the messages its reports turn into."""
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukvm import hvt_abi as hvt
from ukvm.errors import GuestFault
from ukvm.machine import supervisor as sv
from ukvm.machine.memory import GuestMemory
from ukvm.machine.vm import guest_cpl_plan

MIB = 1 << 20


def test_python_mirrors_layout_h():
    with open(f"{sv.SRC_DIR}/layout.h") as f:
        text = f.read()
    defines = {m[1]: int(m[2], 0) for m in re.finditer(r"#define (SV_\w+)\s+(0x[0-9a-f]+|\d+)", text)}
    assert defines and all(getattr(sv, name) == value for name, value in defines.items())
    fields = re.search(r"struct sv_state \{(.*?)\};", text, re.S)[1]
    c_fields = re.findall(r"(\w+)(?=[,;])", re.sub(r"/\*.*?\*/|uint64_t", "", fields, flags=re.S))
    assert tuple(c_fields) == sv.STATE_FIELDS


def test_io_bitmap_opens_exactly_the_hypercall_and_kick_ports():
    tss = sv._tss()
    assert struct.unpack_from("<H", tss, 102)[0] == sv.TSS_HEADER
    bitmap = tss[sv.TSS_HEADER:]
    open_ports = [p for p in range(sv.IO_BITMAP_PORTS) if not bitmap[p // 8] >> (p % 8) & 1]
    assert open_ports == list(range(0x500, 0x50C)) + list(range(0x600, 0x604))
    assert bitmap[-1] == 0xFF and sv.SV_REPORT_PORT not in open_ports


def test_gates_point_at_the_stubs_with_cpl0_selector():
    for vector in (0, 8, 13, 14, 31):
        lo, hi = struct.unpack("<QQ", sv._gate(vector))
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | (hi << 32)
        assert target == sv.SV_BASE + 16 * vector
        assert (lo >> 16) & 0xFFFF == sv.SV_CS and (lo >> 40) & 0xFF == 0x8E
        assert (lo >> 32) & 7 == (sv.IST_DF if vector == 8 else 0)


def test_install_state_and_page_tables():
    mem = GuestMemory(8 * MIB)
    sregs = sv.install(mem, b"\x90" * 64)
    assert mem.host_read(sv.SV_BASE, 64) == b"\x90" * 64
    st = sv.state(mem)
    assert (st["mem_end"], st["read_min"], st["write_min"]) == (8 * MIB, 0x10000, 0x100000)
    assert (st["cs"], st["ss"], st["cr0"], st["cr4"], st["gdt_base"], st["gdt_limit"]) == (8, 0x10, 0x80010021, 0x620, 0x1000, 23)
    pt0 = struct.unpack("<512Q", mem.host_read(hvt.HVT_PT0_BASE, 4096))
    assert pt0[1] == 0x1003 and all(pt0[i] == (i << 12) | 3 for i in range(9, 16))   # supervisor only
    assert sregs.cs.selector == 0x0B and sregs.cs.dpl == 3 and sregs.ss.selector == 0x13
    assert sregs.idt.base == sv.SV_IDT and sregs.tr.base == sv.SV_TSS and sregs.cr4 == 0x620
    mem.close()


@pytest.mark.parametrize("note,choice,pvm,expected", [
    (None, "auto", True, (False, True)),     # Solo5-built on kvm_pvm: supervised
    (None, "auto", False, (False, False)),   # Solo5-built on hardware KVM: hvt's exact state
    (None, "3", False, (False, True)),
    (None, "0", True, (False, False)),
    (1, "auto", True, (True, False)),        # ukvm-built: its runtime drops to CPL3 itself
    (1, "0", True, (False, False)),
    (0, "auto", True, (False, False)),       # built --cpl0: as asked
    (0, "3", True, (False, True)),
])
def test_guest_cpl_plan(monkeypatch, note, choice, pvm, expected):
    monkeypatch.setattr("ukvm.machine.vm.host_emulates_cpl0", lambda: pvm)
    assert guest_cpl_plan(note, choice) == expected


@pytest.mark.parametrize("reason,arg,message", [
    (sv.SV_REPORT_SHUTDOWN, 14, "KVM: unhandled exit: exit_reason=0x8, rip=0x100010"),
    (sv.SV_REPORT_HLT, 0, "KVM: unhandled exit: exit_reason=0x5, rip=0x100011"),
    (sv.SV_REPORT_PORT_IO, 0x70, "Invalid guest port access: port=0x70"),
    (sv.SV_REPORT_UNSUPPORTED, 3, "privileged instruction not emulated at rip=0x100010 (bytes 0f 22 d8)"),
    (sv.SV_REPORT_INTERNAL, 0x1234, "supervisor: internal fault: vector 13 ec=0x0 rip=0x100010 cr2=0x1234"),
    (99, 0, "supervisor: unknown report 99"),
])
def test_report_messages(reason, arg, message):
    mem = GuestMemory(4 * MIB)
    st = dict.fromkeys(sv.STATE_FIELDS, 0)
    st.update(report_reason=reason, report_rip=0x100010, report_arg=arg, report_vector=13,
              report_insn=int.from_bytes(b"\x0f\x22\xd8", "little"))
    mem.host_write(sv.SV_STATE, sv.STATE.pack(*(st[f] for f in sv.STATE_FIELDS)))
    assert message in str(sv.report_error(mem))
    mem.close()




U64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 5, 99, sv.SV_STACK_BASE,
                                                         sv.SV_STACK_TOP - 0x100, sv.SV_DF_STACK_TOP - 8]))


def expected_report(f: dict) -> tuple[str, str]:
    """(the message's start, its end) for the report in state `f`: each reason names its own
    numbers (a report read from the wrong field, or worded by another branch, fails)."""
    reason, rip, arg = f["report_reason"], f["report_rip"], f["report_arg"]
    if reason == sv.SV_REPORT_SHUTDOWN:
        return f"KVM: unhandled exit: exit_reason=0x8, rip={rip:#x}", ""
    if reason == sv.SV_REPORT_HLT:
        return f"KVM: unhandled exit: exit_reason=0x5, rip={rip + 1:#x}", ""
    if reason == sv.SV_REPORT_PORT_IO:
        return f"Invalid guest port access: port={arg:#x}", ""
    if reason == sv.SV_REPORT_UNSUPPORTED:
        shown = f["report_insn"].to_bytes(8, "little")[:min(arg, 8)]
        return (f"supervisor: privileged instruction not emulated at rip={rip:#x} (bytes {shown.hex(' ')})",
                "run this guest at CPL0 with --x-guest-cpl=0")
    if reason == sv.SV_REPORT_INTERNAL:
        return (f"supervisor: internal fault: vector {f['report_vector']} ec={f['report_ec']:#x} rip={rip:#x} "
                f"cr2={arg:#x}", "")
    return f"supervisor: unknown report {reason}", ""


REASON = st.one_of(st.sampled_from([sv.SV_REPORT_SHUTDOWN, sv.SV_REPORT_HLT, sv.SV_REPORT_PORT_IO,
                                    sv.SV_REPORT_UNSUPPORTED, sv.SV_REPORT_INTERNAL]), U64)


@settings(max_examples=200, deadline=None)
@given(st.lists(U64, min_size=len(sv.STATE_FIELDS), max_size=len(sv.STATE_FIELDS)), REASON,
       st.binary(min_size=sv.FRAME.size, max_size=sv.FRAME.size))
def test_reports_from_any_supervisor_state(fields, reason, frame_bytes):
    # Whatever the supervisor's page and stacks hold, a report becomes one GuestFault whose one
    # line is the reason's message with the state's numbers, and the saved-frame reader returns
    # registers or None: nothing else is raised.
    fields[sv.STATE_FIELDS.index("report_reason")] = reason
    mem = GuestMemory(2 * MIB)
    try:
        mem.host_write(sv.SV_STATE, sv.STATE.pack(*fields))
        state = dict(zip(sv.STATE_FIELDS, fields))
        frame = state["report_frame"]
        if sv.SV_STACK_BASE <= frame <= sv.SV_DF_STACK_TOP - sv.FRAME.size:
            mem.host_write(frame, frame_bytes)
        error = sv.report_error(mem)
        start, end = expected_report(state)
        assert type(error) is GuestFault and "\n" not in str(error)
        assert str(error).startswith(start) and str(error).endswith(end), (str(error), start)
        regs = sv.reported_guest_regs(mem)
        assert regs is None or set(regs) >= {"rip", "rsp", "eflags", "rax", "r15"}
    finally:
        mem.close()
