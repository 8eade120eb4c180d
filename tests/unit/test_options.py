"""The options layer (ukvm.options): parsers, matching, messages, usage text, and the rows the
front ends and modules contribute."""
import math

import pytest

from ukvm import hvt_abi as hvt
from ukvm.errors import UsageError
from ukvm.options import (DECLINE, MIB, BadValue, Option, OptionTable, choice, integer, name_and_path, parse_hostport,
                          parse_mac, parse_mem, seconds, text)


@pytest.mark.parametrize("value, size", [
    ("1", MIB), ("512", 512 * MIB), ("  +8", 8 * MIB), ("3x", 3 * MIB),          # %zd: trailing text ignored
    ("-1", (1 << 64) - MIB),                                                      # wrapped to 64 bits, as in C
])
def test_mem_reads_like_c(value, size):
    assert parse_mem(value) == size


@pytest.mark.parametrize("value", ["", "abc", "0", "0x10", " -0", "+"])
def test_mem_refuses_zero_and_garbage(value):
    with pytest.raises(BadValue):
        parse_mem(value)


def test_integer_range_and_spelling():
    port = integer(0, 65535)
    assert port("0") == 0 and port("65535") == 65535
    for bad in ("65536", "-1", "+1", " 1", "1.0", "0x1", "", "\u0661"):    # the last is an Arabic-Indic 1
        with pytest.raises(BadValue, match="an integer from 0 to 65535"):
            port(bad)


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "-inf", "nan", "NaN", "1e309", "", "x", "3601"])
def test_seconds_are_finite_and_in_range(bad):
    with pytest.raises(BadValue):
        seconds(0, 3600)(bad)


def test_seconds_accepts_fractions():
    value = seconds(0, 3600)("0.25")
    assert value == 0.25 and math.isfinite(value)


def test_choice_messages():
    assert choice("auto", "0", "3")("0") == "0"
    with pytest.raises(BadValue) as e:
        choice("auto", "0", "3")("03")
    assert e.value.expected == "auto, 0 or 3"
    with pytest.raises(BadValue) as e:
        choice("ready")("boot")
    assert e.value.expected == "only `ready'"


def test_small_parsers():
    assert parse_mac("2:0:0:0:0:A1") == bytes([2, 0, 0, 0, 0, 0xA1])
    for bad in ("01:02:03", "1:2:3:4:5:xyz", "001:2:3:4:5:6"):
        with pytest.raises(BadValue):
            parse_mac(bad)
    assert parse_hostport("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_hostport(":0") == ("0.0.0.0", 0)
    assert parse_hostport("[::1]:8080") == ("::1", 8080)
    for bad in ("host", "h:x", "h:65536", "h:-1"):
        with pytest.raises(BadValue):
            parse_hostport(bad)
    assert name_and_path("disk0=/tmp/x=y") == ("disk0", "/tmp/x=y")
    for bad in ("bad", "a-b=x", "=x", "a=", "x" * 68 + "=f"):
        with pytest.raises(BadValue):
            name_and_path(bad)
    with pytest.raises(BadValue):
        text()("a b")
    assert text(spaces=True)("a b") == "a b"
    with pytest.raises(BadValue):
        text(4)("abcde")


HVT = OptionTable([
    Option("mem", "memory", parse_mem, default="512", explain=False),
    Option("cpl", "level", choice("auto", "0", "3"), default="auto", usage_on_error=True),
    Option("flag", "a flag"),
    Option("disk", "a disk", text(), device=True, on_error=DECLINE),
])


def test_hvt_matching():
    assert HVT.match("--mem=8")[2] == "8"
    assert HVT.match("--mem") is None               # solo5-hvt: an option without =VALUE is invalid
    assert HVT.match("--flag")[0].name == "flag"
    assert HVT.match("--flag=1") is None            # a flag takes no value
    assert HVT.match("--disk:d0=/x")[1:] == ("d0", "/x")
    assert HVT.match("--disk:d_0=/x") is None       # device names are alphanumeric
    assert HVT.match("--disk=x") is None
    assert HVT.match("--other=1") is None
    assert HVT.match("-") is None


def test_hvt_messages():
    with pytest.raises(UsageError) as e:
        HVT.convert(HVT.by_name["--mem"], "0")
    assert str(e.value) == "Malformed argument to --mem" and not e.value.show_usage
    with pytest.raises(UsageError) as e:
        HVT.convert(HVT.by_name["--cpl"], "1")
    assert str(e.value) == "Malformed argument to --cpl (auto, 0 or 3): `1'" and e.value.show_usage
    with pytest.raises(BadValue):                    # declined: the caller says `Invalid option'
        HVT.convert(HVT.by_name["--disk"], "a b")


def test_defaults_are_parsed():
    values = HVT.defaults()
    assert values == {"mem": hvt.MEM_DEFAULT, "cpl": "auto", "flag": False, "disk": {}}


GNU = OptionTable([
    Option("output", "out", text(), aliases=("-o",), required=True),
    Option("pool", "clones", integer(1, 64), default="4"),
    Option("deadline", "seconds", seconds(0, 3600), default="10"),
    Option("block", "disk", name_and_path, repeat=True),
    Option("help", "help", aliases=("-h",)),
], style="gnu")


def test_gnu_parse_interleaved_and_detached_values():
    values, rest = GNU.parse(["app.hvt", "-o", "x.tar", "--block", "a=1", "--block=b=2", "--pool=8"],
                             positionals="mix")
    assert rest == ["app.hvt"]
    assert values == {"output": "x.tar", "pool": 8, "deadline": 10.0, "block": [("a", "1"), ("b", "2")],
                      "help": False}


def test_gnu_parse_stops_at_the_guest_command_line():
    values, rest = GNU.parse(["--output=o", "app.hvt", "--pool=0", "x"])
    assert rest == ["app.hvt", "--pool=0", "x"] and values["pool"] == 4
    assert GNU.parse(["-o", "o", "--", "-app"])[1] == ["-app"]


@pytest.mark.parametrize("argv, message", [
    (["-o", "o", "--deadline=nan"], "--deadline: expected seconds, more than 0 and at most 3600, got 'nan'"),
    (["-o", "o", "--pool=0"], "--pool: expected an integer from 1 to 64, got '0'"),
    (["-o", "o", "--block", "bad"], "--block: expected NAME=FILE, got 'bad'"),
    (["-o", "o", "--bogus=1"], "invalid option: `--bogus=1'"),
    (["-o", "o", "--block"], "--block needs a value: --block=VALUE"),
    (["--pool=2"], "--output is required"),
])
def test_gnu_errors_are_one_line(argv, message):
    with pytest.raises(UsageError) as e:
        GNU.parse(argv)
    assert str(e.value) == message and "\n" not in str(e.value)


def test_a_name_is_defined_once():
    with pytest.raises(ValueError, match="defined twice"):
        OptionTable([Option("a", "x"), Option("b", "y", aliases=("--a",))])


def test_usage_is_generated_and_wrapped():
    usage = GNU.usage()
    assert "  -o, --output=VALUE (out)" in usage.splitlines()
    assert "  --pool=VALUE (clones; default 4)" in usage.splitlines()
    long = Option("x", "word " * 40).usage_line(width=60)
    assert all(len(line) <= 60 for line in long.splitlines()) and len(long.splitlines()) > 2


def test_render_is_parsed_back():
    disk = Option("block", "disk", text(), device=True)
    table = OptionTable([disk, Option("gdb", "g")])
    assert table.match(disk.render("/a", "storage")) == (disk, "storage", "/a")
    assert table.match(table.by_name["--gdb"].render(True))[0].name == "gdb"


def test_modules_contribute_rows_and_the_run_usage_shows_them():
    from ukvm.cli.run import CORE_OPTIONS, run_usage
    from ukvm.modules import module_classes
    names = [o.name for o in CORE_OPTIONS.options]
    for cls in module_classes():
        for opt in cls.options:
            assert opt.name not in names, f"{cls.name} redefines --{opt.name}"
            names.append(opt.name)
    usage = run_usage("ukvm")
    for opt in ("--block:NAME=PATH", "--net:NAME=", "--net-mac:NAME=", "--gdb", "--dumpcore=DIR", "--mem="):
        assert opt in usage


def test_module_declines_and_malformed_values(tmp_path):
    from elfgen import manifest_payload
    from ukvm.machine.manifest import MFT_DEV_NET_BASIC, Manifest
    from ukvm.modules.gdb import GdbModule
    from ukvm.modules.net import NetModule
    net = NetModule(Manifest.parse(manifest_payload(("service0", MFT_DEV_NET_BASIC)), "t"))
    warnings = []
    net.warn = warnings.append
    assert net.handle_arg("--net-ring=off") and net.ring_mode == "off"
    assert not net.handle_arg("--net-ring=maybe")
    assert not net.handle_arg("--net-mac:service0=xx")
    assert net.handle_arg("--net-mac:service0=2:0:0:0:0:1") and net.macs["service0"] == bytes([2, 0, 0, 0, 0, 1])
    assert not net.handle_arg("--net-mac:other=2:0:0:0:0:1")
    assert warnings == ["Resource not declared in manifest: 'other'"]
    gdb = GdbModule(None)
    assert gdb.handle_arg("--gdb-port=0") and gdb.port == 0
    with pytest.raises(UsageError, match="^Malformed argument to --gdb-port$"):
        gdb.handle_arg("--gdb-port=65536")


def test_the_runtime_renders_what_the_modules_parse():
    """ukvm-oci writes the tender's command line with the same rows the modules read it with."""
    from ukvm.modules.block import BlockModule
    from ukvm.modules.net import NetModule
    from ukvm.options import BLOCK, MEM, NET, NET_MAC
    assert BlockModule.option_table().match(BLOCK.render("/proc/self/fd/5", "rootfs")) == (BLOCK, "rootfs",
                                                                                           "/proc/self/fd/5")
    hit = NetModule.option_table().match(NET_MAC.render("02:00:00:00:00:01", "service"))
    assert hit[0] is NET_MAC and NET_MAC.parse(hit[2]) == bytes([2, 0, 0, 0, 0, 1])
    assert NetModule.option_table().match(NET.render("tap0", "service"))[1:] == ("service", "tap0")
    from ukvm.cli.run import CORE_OPTIONS
    opt, _, value = CORE_OPTIONS.match(MEM.render(64))
    assert CORE_OPTIONS.convert(opt, value) == 64 << 20
