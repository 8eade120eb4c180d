"""The profiler's pure parts: call-site recognition, the frame-pointer walk over guest memory, symbol
lookup, folded and SVG output."""
import xml.etree.ElementTree as ET

from ukvm.modules.profile import follows_call
from ukvm.modules.profile.flamegraph import folded, svg
from ukvm.modules.profile.symbols import Symbols


def test_follows_call():
    assert follows_call(b"\x90\x90\xe8\x10\x00\x00\x00")          # call rel32
    assert follows_call(b"\x90\x90\x90\x90\x90\xff\xd0")          # call *%rax
    assert follows_call(b"\x90\xff\x15\x00\x10\x00\x00")          # call *disp32(%rip)
    assert follows_call(b"\x90\x90\x90\x90\xff\x50\x08")          # call *8(%rax)
    assert not follows_call(b"\x90\x90\x90\x90\x90\xff\xe0")      # jmp *%rax
    assert not follows_call(b"\x90\x90\x90\x90\x90\x90\x90")
    assert not follows_call(b"")


def test_symbols_lookup():
    s = Symbols([(0x2000, 0x10, "b"), (0x1000, 0x100, "a"), (0x3000, 0, "nosize")])
    assert s.lookup(0x1000) == "a" and s.lookup(0x10ff) == "a" and s.lookup(0x1100) is None
    assert s.lookup(0xfff) is None and s.lookup(0x200f) == "b" and s.lookup(0x3000) == "nosize"
    assert s.name_of(0x1234) == "0x1234"


def test_symbols_from_a_file_that_is_not_elf(tmp_path):
    bad = tmp_path / "x"
    bad.write_bytes(b"\x7fELF" + bytes(200))
    assert Symbols.from_file(str(bad)).funcs == []
    assert Symbols.from_file(str(tmp_path / "missing")).funcs == []


def test_folded_and_svg():
    stacks = {("main", "f<int>&", "leaf"): 30, ("main", "g"): 10, ("[ukvm] hvt_hc_poll",): 1}
    text = folded(stacks)
    assert text.splitlines()[0] == "main;f<int>&;leaf 30" and text.endswith("\n")
    root = ET.fromstring(svg(stacks, "t & <title>"))
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "all (41 samples, 100.0%)" in titles and "f<int>& (30 samples, 73.2%)" in titles
    widths = {t.text.split(" (")[0]: float(g.find("{http://www.w3.org/2000/svg}rect").get("width"))
              for g in root.iter("{http://www.w3.org/2000/svg}g") for t in g.iter("{http://www.w3.org/2000/svg}title")}
    assert abs(widths["leaf"] / widths["g"] - 3) < 0.01


def test_hostile_symbol_names_keep_both_files_parseable():
    """A name from the image with `;`, spaces, a newline or control characters cannot add a
    stack to the folded file or make the SVG malformed."""
    s = Symbols([(0x1000, 0x10, "a;b c\n9 main 99\x01<x>&")])
    name = s.name_of(0x1000)
    assert name == "a_b_c_9_main_99_<x>&"
    text = folded({("main", name): 5})
    assert text == f"main;{name} 5\n"
    titles = [t.text for t in ET.fromstring(svg({("main", name): 5}, "t")).iter("{http://www.w3.org/2000/svg}title")]
    assert f"{name} (5 samples, 100.0%)" in titles


def test_svg_of_no_samples_is_valid():
    assert ET.fromstring(svg({}, "empty")).tag.endswith("svg")


class _Vm:
    """What Sampler reads of a VM: its memory, vCPU (unused here), supervision and run loop."""
    def __init__(self, mem, supervised):
        self.mem, self.vcpu, self.supervised = mem, None, supervised

    def _run_loop(self):
        pass


def _sampler(supervised=False):
    import struct

    from ukvm.machine.memory import GuestMemory
    from ukvm.modules.profile import Sampler
    mem = GuestMemory(1 << 20)
    # main at 0x1000 calls mid at 0x2000 (call rel32 ending at 0x1105), which calls leaf at
    # 0x3000 (call ending at 0x2205): the return addresses follow an e8 rel32.
    mem.host_write(0x1100, b"\xe8\0\0\0\0")
    mem.host_write(0x2200, b"\xe8\0\0\0\0")
    symbols = Symbols([(0x1000, 0x200, "main"), (0x2000, 0x300, "mid"), (0x3000, 0x100, "leaf")])
    sampler = Sampler(_Vm(mem, supervised), symbols)
    frame = struct.Struct("<QQ")
    return sampler, mem, frame


def test_walk_follows_a_checked_frame_chain():
    sampler, mem, frame = _sampler()
    mem.host_write(0x80000, frame.pack(0x80100, 0x2205))     # leaf's frame: mid's rbp, return into mid
    mem.host_write(0x80100, frame.pack(0, 0x1105))           # mid's frame: main's rbp (none), into main
    assert sampler.walk(0x3010, 0x80000, 0x7FF00) == (0x3010, 0x2205, 0x1105)
    assert [sampler.symbols.name_of(a - 1) for a in sampler.walk(0x3010, 0x80000, 0x7FF00)[1:]] == ["mid", "main"]


def test_walk_stops_at_what_does_not_check_out():
    sampler, mem, frame = _sampler()
    mem.host_write(0x80000, frame.pack(0x7F000, 0x2205))     # the next frame lies below this one:
    mem.host_write(0x7F000, frame.pack(0, 0x1105))           # never followed, though it checks out
    assert sampler.walk(0x3010, 0x80000, 0x7FF00) == (0x3010, 0x2205)
    mem.host_write(0x80204, frame.pack(0, 0x2205))           # a frame that would check out, but
    assert sampler.walk(0x3010, 0x80204, 0x7FF00) == (0x3010,)          # at a misaligned rbp
    assert sampler.walk(0x3010, 0x7F000, 0x7FF00) == (0x3010,)          # rbp below rsp
    assert sampler.walk(0x3010, (1 << 20) - 8, 0) == (0x3010,)          # frame past guest memory
    assert sampler.walk(0x3010, 1 << 63, 0) == (0x3010,)
    mem.host_write(0x80000, frame.pack(0x80100, 0x2203))     # not just after a call
    assert sampler.walk(0x3010, 0x80000, 0x7FF00) == (0x3010,)


def test_samples_in_the_supervisor_are_named_so():
    from ukvm.machine.supervisor import SV_BASE, SV_CODE_END
    sampler, _, _ = _sampler(supervised=True)
    assert sampler._name(SV_BASE) == sampler._name(SV_CODE_END - 1) == "[ukvm supervisor]"
    assert sampler._name(SV_CODE_END) == f"{SV_CODE_END:#x}" and sampler._name(0x3010) == "leaf"
    plain, _, _ = _sampler(supervised=False)
    assert plain._name(SV_BASE) == f"{SV_BASE:#x}"
