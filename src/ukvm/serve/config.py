"""serve/config.py: `ukvm serve`'s command line as one validated, immutable configuration.

Pure: parsing and validation touch nothing on the host. The one check that must look at the
host (the TAP's network against the host's own routes) takes the routing table as text
(`route_clash`), so it is tested like the rest; Server.start() reads /proc/net/route for it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import socket
import struct

from ukvm import hvt_abi as hvt
from ukvm.errors import UsageError
from ukvm.units import parse_mem

DEFAULT_DEADLINE_S = 10.0
DEFAULT_POOL = 4
DEFAULT_MAX_WAITING = 256
MAX_POOL = 256              # each clone is a VM and a thread
IFNAMSIZ = 16               # a TAP name is at most 15 bytes

USAGE = """usage: ukvm serve [--mem=MB] [--pool=N] --listen=HOST:PORT --guest=IP:PORT [--host-ip=IP/PREFIX]
                  [--metrics=HOST:PORT] [--deadline=SECONDS] [--max-waiting=N] [--tap=NAME] [--] APP.hvt [ARGS]
Serve each TCP connection accepted on --listen with a fresh copy-on-write clone of APP, snapshotted
once it has answered a warm-up connection and waits for network input. APP declares one NET_BASIC
device and listens on IP:PORT; ARGS are its command line. A TAP (--tap, default ukvms<pid>) with
--host-ip (default: the first other address of the guest's /24; it must not overlap the host's
routes) is created for the guests and removed at exit.
  --pool=N         clones serving at once (default 4); more connections wait, at most --max-waiting (256)
  --deadline=S     a connection (waiting included) ends after S seconds (default 10)
  --metrics=H:P    Prometheus metrics at http://H:P/metrics
  --user=NAME      the user serve runs as once set up (default nobody; docs/security.md)"""

OPTIONS = ("mem", "pool", "listen", "guest", "host-ip", "metrics", "deadline", "max-waiting", "tap",
           "x-guest-cpl", "user")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    kernel: str
    args: tuple[str, ...]
    listen: tuple[str, int]
    guest_ip: ipaddress.IPv4Address
    guest_port: int
    host: ipaddress.IPv4Interface          # the TAP's address and network
    host_given: bool = False               # --host-ip was given (else: the default)
    mem: int = hvt.MEM_DEFAULT
    pool: int = DEFAULT_POOL
    metrics: tuple[str, int] | None = None
    deadline_s: float = DEFAULT_DEADLINE_S
    max_waiting: int = DEFAULT_MAX_WAITING
    tap_name: str | None = None
    guest_cpl: str = "auto"
    user: str = "nobody"                   # who serve is once set up (sandbox)
    no_sandbox: bool = False               # --x-no-sandbox: debugging only, unconfined

    def __post_init__(self):
        if self.guest_ip not in self.host.network or self.guest_ip == self.host.ip \
                or self.guest_ip in (self.host.network.network_address, self.host.network.broadcast_address):
            raise UsageError(f"--guest {self.guest_ip} must be another address in --host-ip's network "
                             f"{self.host.network}", show_usage=False)
        if not 1 <= self.guest_port <= 65535:
            raise UsageError(f"--guest: port must be 1-65535, got {self.guest_port}", show_usage=False)
        if not 1 <= self.pool <= MAX_POOL:
            raise UsageError(f"--pool must be at least 1 and at most {MAX_POOL}", show_usage=False)
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise UsageError(f"--deadline must be a finite number of seconds > 0, got {self.deadline_s}",
                             show_usage=False)
        if self.max_waiting < 0:
            raise UsageError("--max-waiting must be 0 or more", show_usage=False)
        if self.tap_name is not None and not 0 < len(self.tap_name.encode()) < IFNAMSIZ:
            raise UsageError(f"--tap: a name of 1 to {IFNAMSIZ - 1} bytes, got {self.tap_name!r}", show_usage=False)

    @classmethod
    def from_argv(cls, argv: list[str]) -> ServeConfig | None:
        """The configuration for `ukvm serve ARGV`; None for --help. Raises UsageError."""
        opts: dict[str, str] = {}
        rest: list[str] = []
        for i, arg in enumerate(argv):
            if arg in ("-h", "--help"):
                return None
            if arg == "--x-no-sandbox":
                opts["x-no-sandbox"] = ""
                continue
            if arg == "--" or not arg.startswith("-"):
                rest = argv[i + 1:] if arg == "--" else argv[i:]
                break
            name, eq, value = arg[2:].partition("=")
            if not eq or name not in OPTIONS:
                raise UsageError(f"invalid option: `{arg}'")
            opts[name] = value
        if not rest:
            raise UsageError("missing APP.hvt")
        for required in ("listen", "guest"):
            if required not in opts:
                raise UsageError(f"--{required} is required")
        guest_host, guest_port = parse_hostport(opts["guest"], "--guest")
        try:
            guest_ip = ipaddress.IPv4Address(guest_host)
        except ValueError:
            raise UsageError(f"--guest: an IPv4 address, got {guest_host!r}", show_usage=False) from None
        if "host-ip" in opts:
            try:
                host = ipaddress.IPv4Interface(opts["host-ip"])
            except ValueError:
                raise UsageError(f"--host-ip: expected IPv4/PREFIX, got {opts['host-ip']!r}", show_usage=False) from None
        else:
            host = default_host_ip(guest_ip)
        return cls(
            kernel=rest[0], args=tuple(rest[1:]), listen=parse_hostport(opts["listen"], "--listen"),
            guest_ip=guest_ip, guest_port=guest_port, host=host, host_given="host-ip" in opts,
            mem=parse_mem(opts["mem"]) if "mem" in opts else hvt.MEM_DEFAULT,
            pool=parse_count(opts, "pool", DEFAULT_POOL),
            metrics=parse_hostport(opts["metrics"], "--metrics") if "metrics" in opts else None,
            deadline_s=parse_seconds(opts, "deadline", DEFAULT_DEADLINE_S),
            max_waiting=parse_count(opts, "max-waiting", DEFAULT_MAX_WAITING),
            tap_name=opts.get("tap"), guest_cpl=opts.get("x-guest-cpl", "auto"),
            user=opts.get("user", "nobody"), no_sandbox="x-no-sandbox" in opts)


def parse_count(opts: dict[str, str], name: str, default: int) -> int:
    if name not in opts:
        return default
    if not opts[name].isdigit():
        raise UsageError(f"--{name}: expected a number, got {opts[name]!r}", show_usage=False)
    return int(opts[name])


def parse_seconds(opts: dict[str, str], name: str, default: float) -> float:
    if name not in opts:
        return default
    try:
        return float(opts[name])
    except ValueError:
        raise UsageError(f"--{name}: expected seconds, got {opts[name]!r}", show_usage=False) from None


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}", show_usage=False)
    return host.strip("[]") or "0.0.0.0", int(port)


def default_host_ip(guest: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
    """The first address of the guest's /24 that is not the guest's."""
    network = ipaddress.IPv4Network(f"{guest}/24", strict=False)
    return ipaddress.IPv4Interface(f"{next(h for h in network.hosts() if h != guest)}/24")


def parse_routes(text: str) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, network) of each route in /proc/net/route's format (addresses little-endian hex)."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            routes.append((fields[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
        except (ValueError, struct.error):
            continue
    return routes


def route_clash(config: ServeConfig, routes: list[tuple[str, ipaddress.IPv4Network]]) -> str | None:
    """The one-line reason why the TAP's network would clash with a route the host already has
    (the default route aside: every network overlaps it), or None."""
    for dev, net in routes:
        if net.prefixlen and net.overlaps(config.host.network):
            which = "--host-ip" if config.host_given else "the default --host-ip"
            return (f"{which} {config.host} would clash with the host's route to {net} on {dev}: "
                    f"choose a free network with --host-ip=IP/PREFIX and --guest=IP:PORT in it")
    return None
