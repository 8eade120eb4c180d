"""The profiler's pure parts: call-site recognition, symbol lookup, folded and SVG output."""
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


def test_svg_of_no_samples_is_valid():
    assert ET.fromstring(svg({}, "empty")).tag.endswith("svg")
