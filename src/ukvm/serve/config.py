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
from ukvm.options import (GUEST_CPL, HELP, MEM, BadValue, Option, OptionTable, integer, parse_hostport, seconds,
                          text)

DEFAULT_DEADLINE_S = 10.0
DEFAULT_CORES_PER_MINUTE = 10
DEFAULT_TRACE_EVERY = 100
DEFAULT_POOL = 4
DEFAULT_MAX_WAITING = 256
MAX_POOL = 4096             # each clone is a VM, a thread, ~7 fds and ~1 MiB of host memory (docs/serve.md)
MAX_WAITING = 1 << 20
MAX_DEADLINE_S = 7 * 86400
IFNAMSIZ = 16               # a TAP name is at most 15 bytes


def guest_address(value: str) -> tuple[ipaddress.IPv4Address, int]:
    """--guest=IP:PORT: an IPv4 address and a port from 1 to 65535."""
    host, port = parse_hostport(value)
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise BadValue("IPv4:PORT") from None
    if port == 0:
        raise BadValue("IPv4:PORT with a port from 1 to 65535")
    return address, port


def ipv4_interface(value: str) -> ipaddress.IPv4Interface:
    try:
        return ipaddress.IPv4Interface(value)
    except ValueError:
        raise BadValue("IPv4/PREFIX") from None


# `ukvm serve`'s rows of the options layer (options.py; gnu spelling).
TABLE = OptionTable([
    MEM,
    Option("pool", "clones serving at once; more connections wait, at most --max-waiting", integer(1, MAX_POOL),
           metavar="N", default=str(DEFAULT_POOL)),
    Option("listen", "accept the clients' TCP connections at HOST:PORT", parse_hostport, metavar="HOST:PORT",
           required=True),
    Option("guest", "the address and port APP listens on", guest_address, metavar="IP:PORT", required=True),
    Option("host-ip", "the TAP's address and network; must not overlap the host's routes "
           "(default: the first other address of the guest's /24)", ipv4_interface, metavar="IP/PREFIX"),
    Option("metrics", "Prometheus metrics at http://HOST:PORT/metrics", parse_hostport, metavar="HOST:PORT"),
    Option("deadline", "a connection (waiting included) ends after SECONDS", seconds(0, MAX_DEADLINE_S),
           metavar="SECONDS", default=f"{DEFAULT_DEADLINE_S:g}"),
    Option("max-waiting", "connections waiting for a clone, at most", integer(0, MAX_WAITING), metavar="N",
           default=str(DEFAULT_MAX_WAITING)),
    Option("tap", "the TAP's name (default ukvms<pid>)", text(IFNAMSIZ - 1), metavar="NAME"),
    Option("dumpcore", "write a core file to DIR for each connection whose clone aborts, traps or fails "
           "(DIR writable by --user)", text(4096, spaces=True), metavar="DIR"),
    Option("dumpcore-per-minute", "at most N cores a minute", integer(1, 10000), metavar="N",
           default=str(DEFAULT_CORES_PER_MINUTE)),
    Option("trace", "write the hypercalls of one connection in --trace-every to FILE (JSON lines, "
           "each with the connection's number)", text(4096, spaces=True), metavar="FILE"),
    Option("trace-every", "trace every Nth connection", integer(1, 1 << 30), metavar="N",
           default=str(DEFAULT_TRACE_EVERY)),
    Option("user", "the user serve runs as once set up (docs/security.md)", text(256), metavar="NAME",
           default="nobody"),
    GUEST_CPL,
    Option("x-no-sandbox", "debugging: do not confine serve (runs as root, no seccomp)"),
    HELP,
], style="gnu")

USAGE = """usage: ukvm serve [OPTIONS] --listen=HOST:PORT --guest=IP:PORT [--] APP.hvt [ARGS]
Serve each TCP connection accepted on --listen with a fresh copy-on-write clone of APP, snapshotted
once it has answered a warm-up connection and waits for network input. APP declares one NET_BASIC
device and listens on IP:PORT; ARGS are its command line. A TAP with --host-ip is created for the
guests and removed at exit.
""" + TABLE.usage()


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
    dumpcore: str | None = None            # --dumpcore=DIR: cores of clones that crash
    dumpcore_per_minute: int = DEFAULT_CORES_PER_MINUTE
    trace: str | None = None               # --trace=FILE: one connection in trace_every
    trace_every: int = DEFAULT_TRACE_EVERY
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
        if "-h" in argv[:1] or any(arg in ("-h", "--help") for arg in _options_part(argv)):
            return None
        values, rest = TABLE.parse(argv)
        if not rest:
            raise UsageError("missing APP.hvt")
        guest_ip, guest_port = values["guest"]
        host = values["host-ip"]
        return cls(
            kernel=rest[0], args=tuple(rest[1:]), listen=values["listen"], guest_ip=guest_ip,
            guest_port=guest_port, host=host or default_host_ip(guest_ip), host_given=host is not None,
            mem=values["mem"], pool=values["pool"], metrics=values["metrics"], deadline_s=values["deadline"],
            max_waiting=values["max-waiting"], tap_name=values["tap"], guest_cpl=values["x-guest-cpl"],
            user=values["user"], no_sandbox=values["x-no-sandbox"], dumpcore=values["dumpcore"],
            dumpcore_per_minute=values["dumpcore-per-minute"], trace=values["trace"],
            trace_every=values["trace-every"])


def _options_part(argv: list[str]) -> list[str]:
    """The arguments before APP (where --help counts even after a bad option)."""
    for i, arg in enumerate(argv):
        if arg == "--" or not arg.startswith("-"):
            return argv[:i]
    return argv


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


def local_addresses(fib_trie: str) -> set[str]:
    """The host's own IPv4 addresses from /proc/net/fib_trie: each `|-- ADDR` leaf followed by a
    `/32 host LOCAL` line. (A bind() probe is no test: with lo down any address binds.)"""
    found, leaf = set(), None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            leaf = text[4:]
        elif leaf and text.startswith("/32 host LOCAL"):
            found.add(leaf)
    return found


def route_clash(config: ServeConfig, routes: list[tuple[str, ipaddress.IPv4Network]]) -> str | None:
    """The one-line reason why the TAP's network would clash with a route the host already has
    (the default route aside: every network overlaps it), or None."""
    for dev, net in routes:
        if net.prefixlen and net.overlaps(config.host.network):
            which = "--host-ip" if config.host_given else "the default --host-ip"
            return (f"{which} {config.host} would clash with the host's route to {net} on {dev}: "
                    f"choose a free network with --host-ip=IP/PREFIX and --guest=IP:PORT in it")
    return None
