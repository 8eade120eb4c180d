"""serve's configuration (serve/config.py): parsing, validation, the route clash check."""
import ipaddress
import math

import pytest

from ukvm.errors import UsageError
from ukvm.serve.config import ServeConfig, parse_routes, route_clash

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


@pytest.mark.parametrize("value", ["0", "-1", "inf", "-inf", "nan", "NaN", "1e400"])
def test_deadline_must_be_finite_and_positive(value):
    with pytest.raises(UsageError, match="--deadline must be a finite number of seconds > 0"):
        config(f"--deadline={value}")


def test_deadline_that_is_not_a_number():
    with pytest.raises(UsageError, match="--deadline: expected seconds, got 'soon'"):
        config("--deadline=soon")


@pytest.mark.parametrize("options, message", [
    (["--pool=0"], "--pool must be at least 1"),
    (["--pool=100000"], "at most 256"),
    (["--pool=-3"], "--pool: expected a number"),
    (["--max-waiting=x"], "--max-waiting: expected a number"),
    (["--guest=10.0.0.2:0"], "port must be 1-65535"),
    (["--guest=example.org:80"], "--guest: an IPv4 address"),
    (["--guest=10.0.0.2"], "--guest: expected HOST:PORT"),
    (["--listen=127.0.0.1:70000"], "--listen: expected HOST:PORT"),
    (["--host-ip=10.0.0.1"], "must be another address"),                # a /32: no room for the guest
    (["--host-ip=10.0.0.2/24"], "must be another address"),             # the guest's own
    (["--host-ip=192.168.1.1/24"], "must be another address"),
    (["--guest=10.0.0.255:80"], "must be another address"),             # the broadcast address
    (["--host-ip=10.0.0.300/24"], "--host-ip: expected IPv4/PREFIX"),
    (["--tap=" + "x" * 16], "--tap: a name of 1 to 15 bytes"),
    (["--mem=zero"], "Malformed argument to --mem"),
    (["--bogus=1"], "invalid option: `--bogus=1'"),
    (["--pool"], "invalid option: `--pool'"),
])
def test_bad_values_are_one_clear_error(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        config(*options)


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
