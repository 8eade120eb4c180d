"""options: the one options layer: every command-line option as a row of a declarative table.

An `Option` says its name, the value's syntax (METAVAR), its help, how its value is parsed and
checked (a parser below: ranges, finite numbers, choices), and its default (as text, what one would type). Front ends build an
`OptionTable` from rows; tender modules contribute their own rows (Module.options), as Solo5's
tender modules do (--block:NAME=PATH, --net:NAME=TAP, --gdb, --dumpcore=DIR ...). Usage texts
are generated from the rows, and every value goes through its parser, so a bad value is one
line naming the option and what it accepts.

Two spellings, one table type:
- "hvt" (`ukvm run`, `ukvm-hvt`): solo5-hvt's syntax and messages. Only `--name=VALUE`;
  `Malformed argument to --name ...` for a bad value of a core option, `Invalid option: `ARG'`
  for anything not recognised or declined (what solo5-hvt says for its modules' options).
- "gnu" (`ukvm serve`, `ukvm oci build`): `--name=VALUE` or `--name VALUE`, short aliases
  (`-o`), `--name: expected WHAT, got 'VALUE'`.
The oci runtime composes a tender command line with `Option.render` from the same rows.

The bottom layer next to errors and hvt_abi: imports only ukvm.errors, so that every other
layer (machine, modules, front ends) may use it. Kept light: the tender imports it at start-up.
"""
from __future__ import annotations


from ukvm.errors import UsageError

MIB = 1 << 20
DEVICE_NAME_MAX = 67          # manifest names: 1-67 alphanumerics (hvt-abi.md)

# What a bad value leads to ("hvt" tables; "gnu" ones always say `--name: expected ...`).
MALFORMED = "malformed"       # `Malformed argument to --name (WHAT): `VALUE'' (or without the detail)
DECLINE = "decline"           # not accepted: `Invalid option: `ARG'' (solo5-hvt's modules)


class BadValue(ValueError):
    """A parser's refusal; `expected` says what the option accepts ("" if it goes unsaid)."""

    def __init__(self, expected: str = ""):
        super().__init__(expected)
        self.expected = expected


# --- parsers: str -> value, or BadValue ------------------------------------------------------

def parse_mem(text: str) -> int:
    """--mem=N: N MiB as bytes, read like C `%zd` (leading space and sign, trailing garbage
    ignored) and wrapped to 64 bits, as solo5-hvt does; 0 is refused."""
    text = text.lstrip(" \t\n\v\f\r")
    sign = text[:1] if text[:1] in "+-" else ""
    digits = text[len(sign):]
    digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
    size = (int(sign + digits) * MIB) % (1 << 64) if digits else 0
    if size == 0:
        raise BadValue("MiB, more than 0")
    return size


def choice(*values: str):
    """One of `values`, spelled exactly."""
    expected = f"only `{values[0]}'" if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]

    def parse(text: str) -> str:
        if text not in values:
            raise BadValue(expected)
        return text
    parse.choices = values
    return parse


def integer(lo: int, hi: int):
    """A decimal integer lo <= N <= hi: digits only (no sign, space or base prefix)."""
    expected = f"an integer from {lo} to {hi}"

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not lo <= int(text) <= hi:
            raise BadValue(expected)
        return int(text)
    return parse


def seconds(lo: float, hi: float):
    """A finite number of seconds, lo < S <= hi (so 0, negatives, inf and nan are refused)."""
    expected = f"seconds, more than {lo:g} and at most {hi:g}"

    def parse(text: str) -> float:
        import math           # here: every start-up would pay for it otherwise
        try:
            value = float(text)
        except ValueError:
            raise BadValue(expected) from None
        if not math.isfinite(value) or not lo < value <= hi:
            raise BadValue(expected)
        return value
    return parse


def text(max_len: int = 4096, spaces: bool = False):
    """A non-empty string of at most max_len characters (paths, interface names), by default
    without white space (solo5-hvt declines those)."""
    expected = f"1 to {max_len} characters" + ("" if spaces else ", no spaces")

    def parse(value: str) -> str:
        if not value or len(value) > max_len or (not spaces and any(c.isspace() for c in value)):
            raise BadValue(expected)
        return value
    return parse


def anything(value: str) -> str:
    """Any string, the empty one included (a command line for the guest, a tag)."""
    return value


HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_mac(value: str) -> bytes:
    """A MAC address: six `:`-separated groups of one or two hex digits."""
    groups = value.split(":")
    if len(groups) != 6 or not all(1 <= len(g) <= 2 and set(g) <= HEX_DIGITS for g in groups):
        raise BadValue("six hex bytes like 02:00:00:00:00:01")
    return bytes(int(g, 16) for g in groups)


def parse_hostport(value: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be empty: 0.0.0.0; `[v6]` brackets are dropped), port 0-65535."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise BadValue("HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def name_and_path(value: str) -> tuple[str, str]:
    """NAME=PATH with NAME 1-67 alphanumerics (a manifest device name) and PATH not empty."""
    name, sep, path = value.partition("=")
    if not sep or not is_device_name(name) or not path:
        raise BadValue("NAME=FILE")
    return name, path


def is_device_name(name: str) -> bool:
    return 1 <= len(name) <= DEVICE_NAME_MAX and name.isascii() and name.isalnum()


# --- rows --------------------------------------------------------------------------------------

class Option:
    """One option. `parse` None makes a flag (`--name`, value True); `device` makes it per
    device (`--name:NAME=VALUE`, values by device name); `repeat` collects a list.
    `on_error` (hvt tables): MALFORMED or DECLINE; `explain`: whether the Malformed message
    says what is accepted (solo5-hvt's own options do not); `usage_on_error`: the usage text
    follows the message."""

    __slots__ = ("name", "metavar", "help", "parse", "default", "device", "repeat", "aliases",
                 "required", "on_error", "explain", "usage_on_error")

    def __init__(self, name: str, help: str, parse=None, *, metavar: str = "", default=None,
                 device: bool = False, repeat: bool = False, aliases: tuple[str, ...] = (),
                 required: bool = False, on_error: str = MALFORMED, explain: bool = True,
                 usage_on_error: bool = False):
        self.name, self.help, self.parse, self.metavar = name, help, parse, metavar or "VALUE"
        self.default, self.device, self.repeat, self.aliases = default, device, repeat, aliases
        self.required, self.on_error, self.explain = required, on_error, explain
        self.usage_on_error = usage_on_error

    def default_value(self):
        if self.repeat or self.device:
            return [] if self.repeat else {}
        if self.flag:
            return False
        return None if self.default is None else self.parse(self.default)

    @property
    def flag(self) -> bool:
        return self.parse is None

    @property
    def syntax(self) -> str:
        if self.flag:
            return f"--{self.name}"
        return f"--{self.name}:NAME={self.metavar}" if self.device else f"--{self.name}={self.metavar}"

    def usage_line(self, width: int = 100) -> str:
        """`  SYNTAX (help; default D)`, wrapped at `width` with continuation lines indented."""
        names = ", ".join(self.aliases + (self.syntax,))
        default = f"; default {self.default}" if self.default else ""
        lines, line = [], f"  {names}"
        for word in f"({self.help}{default})".split(" "):
            if len(line) + 1 + len(word) > width and line.strip():
                lines.append(line)
                line = "     "
            line += " " + word
        return "\n".join(lines + [line])

    def render(self, value, device: str | None = None) -> str:
        """The argument that sets this option to `value` (as text), e.g. for a tender argv."""
        if self.flag:
            return f"--{self.name}"
        return f"--{self.name}:{device}={value}" if self.device else f"--{self.name}={value}"

    def error(self, value: str, bad: BadValue, style: str) -> UsageError:
        if style == "gnu":
            what = f"expected {bad.expected}, " if bad.expected else ""
            return UsageError(f"--{self.name}: {what}got {value!r}", show_usage=False)
        detail = f" ({bad.expected}): `{value}'" if self.explain and bad.expected else ""
        return UsageError(f"Malformed argument to --{self.name}{detail}", show_usage=self.usage_on_error)


class OptionTable:
    """Rows of options with one spelling ("hvt" or "gnu"); see the module docstring."""

    def __init__(self, options, style: str = "hvt"):
        self.options = tuple(options)
        self.style = style
        self.by_name = {}
        for opt in self.options:
            for key in (f"--{opt.name}",) + opt.aliases:
                if key in self.by_name:
                    raise ValueError(f"option {key} defined twice")
                self.by_name[key] = opt

    def __add__(self, other: OptionTable) -> OptionTable:
        return OptionTable(self.options + other.options, self.style)

    def match(self, arg: str) -> tuple[Option, str | None, str | None] | None:
        """(option, device name or None, value text or None for a flag or a detached value);
        None if `arg` is no option of this table (for hvt: a flag given a value, an option
        without `=VALUE`, a device option without a valid NAME)."""
        key, eq, value = arg.partition("=")
        head, colon, device = key.partition(":")
        opt = self.by_name.get(head)
        if opt is None:
            return None
        if opt.device:
            if not colon or not eq or not is_device_name(device):
                return None
            return opt, device, value
        if colon and not eq:
            return None
        if opt.flag:
            return (opt, None, None) if not eq else None
        if not eq:
            return (opt, None, None) if self.style == "gnu" else None
        return opt, None, value

    def convert(self, opt: Option, value: str):
        """The parsed value; UsageError (or BadValue for DECLINE rows of hvt tables)."""
        if opt.flag:
            return True
        try:
            return opt.parse(value)
        except BadValue as bad:
            if self.style == "hvt" and opt.on_error == DECLINE:
                raise
            raise opt.error(value, bad, self.style) from None

    def defaults(self) -> dict:
        """Each option's value when not given: [] / {} for repeated / per-device options, False
        for flags, else its default text parsed (None without one)."""
        return {o.name: o.default_value() for o in self.options}

    def store(self, values: dict, opt: Option, device: str | None, value) -> None:
        if opt.device:
            values[opt.name][device] = value
        elif opt.repeat:
            values[opt.name].append(value)
        else:
            values[opt.name] = value          # the later option wins, as in solo5-hvt

    def parse(self, argv: list[str], positionals: str = "stop") -> tuple[dict, list[str]]:
        """Parse a gnu-style command line: (values by option name, positional arguments).
        positionals="stop": the first non-option ends the options (it and all after it are
        returned, as a guest's command line is); "mix": options and positionals interleave.
        `--` ends the options. Required options are checked here."""
        values = self.defaults()
        rest: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            if arg == "--":
                rest += argv[i:]
                break
            if not arg.startswith("-") or arg == "-":
                if positionals == "stop":
                    rest += argv[i - 1:]
                    break
                rest.append(arg)
                continue
            hit = self.match(arg)
            if hit is None:
                raise UsageError(f"invalid option: `{arg}'")
            opt, device, value = hit
            if value is None and not opt.flag:
                if i >= len(argv):
                    raise UsageError(f"{arg} needs a value: {opt.syntax}", show_usage=False)
                value = argv[i]
                i += 1
            self.store(values, opt, device, self.convert(opt, value))
        for opt in self.options:
            if opt.required and values[opt.name] in (None, [], {}):
                raise UsageError(f"--{opt.name} is required")
        return values, rest

    def usage(self) -> str:
        return "\n".join(o.usage_line() for o in self.options)


# --- rows shared by several front ends ----------------------------------------------------------

MEM_DEFAULT_MIB = 512
GUEST_CPL_CHOICES = ("auto", "0", "3")

MEM = Option("mem", "guest memory in MiB", parse_mem, metavar="MiB", default=str(MEM_DEFAULT_MIB), explain=False)
GUEST_CPL = Option("x-guest-cpl", "privilege level of the guest's code; auto: 3 for guests built by "
                   "ukvm build, and for other guests under ukvm's supervisor where the host emulates CPL0",
                   choice(*GUEST_CPL_CHOICES), metavar="auto|0|3", default="auto", usage_on_error=True)
HELP = Option("help", "display this help", aliases=("-h",))      # gnu tables; solo5-hvt has no -h

# The device rows of the block and net modules, here so that the oci runtime can write a tender
# command line with them (Option.render) without importing the modules.
BLOCK = Option("block", "attach block device/file at PATH as block storage NAME", text(4096),
               metavar="PATH", device=True, on_error=DECLINE)
NET = Option("net", "attach tap at IFACE or at fd NN as network NAME", text(4096), metavar="IFACE|@NN",
             device=True, on_error=DECLINE)
NET_MAC = Option("net-mac", "set HWADDR for network NAME", parse_mac, metavar="HWADDR", device=True,
                 on_error=DECLINE)
