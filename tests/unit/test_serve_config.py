"""serve's configuration (serve/config.py): parsing, validation, the route clash check."""
import ipaddress
import math

import pytest

from ukvm.errors import UsageError
from ukvm.serve.config import ServeConfig, local_addresses, parse_routes, route_clash

BASE = ["--listen=127.0.0.1:8080", "--guest=10.0.0.2:80"]


def config(*options, kernel="app.hvt"):
    return ServeConfig.from_argv([*BASE, *options, kernel])


def test_defaults_and_values():
    c = config("--pool=2", "--deadline=0.5", "--mem=64", "--max-waiting=0", "--tap=t0", "--", "--x")
    assert (c.pool, c.deadline_s, c.mem, c.max_waiting, c.tap_name) == (2, 0.5, 64 << 20, 0, "t0")
    assert c.host == ipaddress.IPv4Interface("10.0.0.1/24") and not c.host_given
    assert c.kernel == "--x" and c.args == ("app.hvt",)
    c = ServeConfig.from_argv([*BASE, "app.hvt", "a", "--b"])
    assert c.args == ("a", "--b") and c.pool == 4 and c.deadline_s == 10.0
    assert ServeConfig.from_argv(["--help"]) is None
    assert ServeConfig.from_argv(["--pool=0", "-h", "app.hvt"]) is None     # help wins over a bad value
    c = ServeConfig.from_argv(["--listen", "127.0.0.1:1", "--guest", "10.0.0.2:80", "--x-no-sandbox", "a.hvt"])
    assert c.listen == ("127.0.0.1", 1) and c.no_sandbox and c.user == "nobody"   # detached values, a flag


@pytest.mark.parametrize("value", ["0", "-1", "inf", "-inf", "nan", "NaN", "1e400", "soon", ""])
def test_deadline_must_be_finite_and_positive(value):
    with pytest.raises(UsageError) as e:
        config(f"--deadline={value}")
    assert str(e.value) == f"--deadline: expected seconds, more than 0 and at most 604800, got {value!r}"


@pytest.mark.parametrize("options, message", [
    (["--pool=0"], "--pool: expected an integer from 1 to 4096, got '0'"),
    (["--pool=100000"], "--pool: expected an integer from 1 to 4096, got '100000'"),
    (["--pool=-3"], "--pool: expected an integer from 1 to 4096, got '-3'"),
    (["--max-waiting=x"], "--max-waiting: expected an integer from 0 to"),
    (["--guest=10.0.0.2:0"], "--guest: expected IPv4:PORT with a port from 1 to 65535, got '10.0.0.2:0'"),
    (["--guest=example.org:80"], "--guest: expected IPv4:PORT, got 'example.org:80'"),
    (["--guest=10.0.0.2"], "--guest: expected HOST:PORT"),
    (["--listen=127.0.0.1:70000"], "--listen: expected HOST:PORT"),
    (["--host-ip=10.0.0.1"], "must be another address"),                # a /32: no room for the guest
    (["--host-ip=10.0.0.2/24"], "must be another address"),             # the guest's own
    (["--host-ip=192.168.1.1/24"], "must be another address"),
    (["--guest=10.0.0.255:80"], "must be another address"),             # the broadcast address
    (["--host-ip=10.0.0.300/24"], "--host-ip: expected IPv4/PREFIX"),
    (["--tap=" + "x" * 16], "--tap: expected 1 to 15 characters, no spaces"),
    (["--mem=zero"], "--mem: expected MiB, more than 0, got 'zero'"),
    (["--bogus=1"], "invalid option: `--bogus=1'"),
    (["--x-no-sandbox=1"], "invalid option: `--x-no-sandbox=1'"),
    (["--pool"], "--pool: expected an integer from 1 to 4096, got 'app.hvt'"),     # the next argument is its value
])
def test_bad_values_are_one_clear_error(options, message):
    with pytest.raises(UsageError) as e:
        config(*options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_pieces():
    with pytest.raises(UsageError, match="missing APP.hvt"):
        ServeConfig.from_argv(BASE)
    with pytest.raises(UsageError, match="--guest is required"):
        ServeConfig.from_argv(["--listen=127.0.0.1:1", "a.hvt"])


def test_a_configuration_cannot_be_built_invalid_either():
    good = config()
    with pytest.raises(UsageError):
        ServeConfig(**{**good.__dict__, "deadline_s": math.inf})
    with pytest.raises(UsageError):
        ServeConfig(**{**good.__dict__, "pool": 0})


# /proc/net/route as Linux writes it: addresses and masks in host (little-endian) order.
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
docker0\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_routes_are_parsed_from_proc_net_route():
    assert parse_routes(ROUTES) == [("eth0", ipaddress.IPv4Network("0.0.0.0/0")),
                                    ("eth0", ipaddress.IPv4Network("192.168.0.0/24")),
                                    ("docker0", ipaddress.IPv4Network("10.0.0.0/16"))]
    assert parse_routes("Iface\tDestination\nbroken line\n") == []


def test_the_default_host_network_must_not_clash_with_a_host_route():
    message = route_clash(config(), parse_routes(ROUTES))
    assert message == ("the default --host-ip 10.0.0.1/24 would clash with the host's route to 10.0.0.0/16 on "
                       "docker0: choose a free network with --host-ip=IP/PREFIX and --guest=IP:PORT in it")
    c = config("--host-ip=192.168.0.77/24", "--guest=192.168.0.78:80")
    assert route_clash(c, parse_routes(ROUTES)).startswith("--host-ip 192.168.0.77/24 would clash")


def test_a_free_network_is_accepted_and_the_default_route_is_no_clash():
    c = config("--host-ip=10.1.0.1/24", "--guest=10.1.0.2:80")
    assert route_clash(c, parse_routes(ROUTES)) is None
    assert route_clash(config(), []) is None


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
"""


def test_local_addresses_are_the_host_leaves_of_the_fib_trie():
    assert local_addresses(FIB_TRIE) == {"127.0.0.1", "192.0.2.2"}
    assert local_addresses("") == set()          # a namespace with lo down has none
