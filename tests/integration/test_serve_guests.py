"""`ukvm serve` with two guests, lwIP's (examples/httpd) and MirageOS's (mirage-tcpip 8.0.0,
../shared/ocaml-mirage/mirage_http8080.hvt), issue 22: every request answered by a fresh
instance from the first SYN, and no client behaviour ends the server.

Everything runs in a network namespace the test creates (test_serve.Served); every wait is
bounded. Timing is not asserted (bench/ measures it): a first SYN that went unanswered would
show here as a client error only if it outlasted the client's timeout, so the warm-up is checked
through the metrics (no frame of a connection dropped) and bench/run.py's p50.
"""
import os
import sys
from pathlib import Path

import pytest

from conftest import needs_kvm
from test_serve import Served, httpd, metric  # noqa: F401  (httpd: the session fixture)

pytestmark = [needs_kvm, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TAPs need root")]

MIRAGE = Path(__file__).resolve().parents[2].parent / "shared" / "ocaml-mirage" / "mirage_http8080.hvt"
CHAOS = Path(__file__).with_name("chaos_client.py")
SERVE_FRAME_DROPS = ("queue_full", "not_own_connection", "spoofed_source", "too_short")


@pytest.fixture(params=["lwip", "mirage"])
def guest(request, httpd):  # noqa: F811
    """(image, guest port, guest args, answers like the MirageOS example)."""
    if request.param == "lwip":
        return httpd, 80, (), False
    if not MIRAGE.exists():
        pytest.skip(f"{MIRAGE} is absent (../shared is not mounted)")
    return MIRAGE, 8080, ("--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"), True


@pytest.fixture
def serve(guest):
    servers = []

    def start(*options):
        image, port, args, _ = guest
        s = Served(image, *options, guest_port=port, guest_args=args)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.close()


def total(values: dict, name: str, **labels) -> float:
    """The sum of a metric over its label values (those given must match)."""
    return sum(v for (n, ls), v in values.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def check_no_frame_of_a_connection_dropped(m: dict) -> None:
    for reason in SERVE_FRAME_DROPS:
        assert total(m, "ukvm_switch_dropped_frames_total", reason=reason) == 0, (reason, m)


def test_200_sequential_and_200_concurrent_each_from_a_fresh_instance(serve, guest):
    mirage = guest[3]
    s = serve("--pool=4")
    seq = s.client("seq", "200", "/seq/", mirage=mirage)
    assert seq["ok"] == seq["total"] == 200, seq["errors"]
    assert seq["served"] == [1]
    conc = s.client("conc", "200", "16", "/conc/", mirage=mirage)
    assert conc["ok"] == conc["total"] == 200, conc["errors"]
    assert conc["served"] == [1]
    assert s.proc.poll() is None
    m = s.settled_metrics()
    assert metric(m, "ukvm_requests_total", outcome="ok") == 400
    assert total(m, "ukvm_requests_total") == 400                 # no other outcome
    assert metric(m, "ukvm_request_seconds_count") == 400
    assert metric(m, "ukvm_resets_total") == 400
    assert metric(m, "ukvm_clones_in_use") == 0 and metric(m, "ukvm_clones") == 4
    assert total(m, "ukvm_clone_failures_total") == 0 and total(m, "ukvm_connection_errors_total") == 0
    check_no_frame_of_a_connection_dropped(m)
    # A clone answers its connection's SYN itself: no ARP of its own for the host (the warm-up
    # left the host in its cache), at least SYN-ACK, answer and FIN out per request.
    assert metric(m, "ukvm_exits_total", hypercall="net_write") >= 3 * 400
    status, out = s.stop()
    assert status == 0, out
    assert "drained: 400 requests served, 0 clone failures, 0 rejected" in out
    assert "snapshot taken after a warm-up connection" in out


def test_chaotic_clients_end_only_their_own_connections(serve, guest):
    mirage = guest[3]
    s = serve("--pool=4", "--deadline=2")
    warm = s.client("seq", "40", "/warm/", mirage=mirage)
    assert warm["ok"] == 40, warm["errors"]
    fds0, maps0, rss0 = s.usage()
    chaos = s.client("2000", "24", "seed-22", "2", mirage=mirage, script=CHAOS)
    assert s.proc.poll() is None, s.stop()[1]                   # serve is alive
    assert chaos["connections"] >= 2000 and not [e for e in chaos["errors"] if e.startswith("connect")], chaos
    assert chaos["answered"] == chaos["well_formed"] > 500, chaos["errors"]   # every well-formed request
    assert chaos["held_and_ended"] == 2, chaos                   # silent connections end at the deadline
    m = s.settled_metrics()
    # Every connection accepted is accounted for once, whatever its end.
    assert total(m, "ukvm_requests_total") == 40 + chaos["connections"], m
    assert metric(m, "ukvm_requests_total", outcome="ok") >= 40 + chaos["well_formed"]
    assert metric(m, "ukvm_clones_in_use") == 0 and metric(m, "ukvm_clones") == 4
    assert total(m, "ukvm_clone_failures_total", cause="exit") == total(m, "ukvm_clone_failures_total",
                                                                          cause="fault") == 0
    assert total(m, "ukvm_clone_failures_total", cause="broken") == 0
    assert total(m, "ukvm_connection_errors_total") == 0         # no handler failed on any of them
    check_no_frame_of_a_connection_dropped(m)                    # the switch kept every clone to its own
    after = s.client("seq", "20", "/after/", mirage=mirage)
    assert after["ok"] == 20 and after["served"] == [1], after["errors"]
    fds1, maps1, rss1 = s.usage()
    assert fds1 == fds0, (fds0, fds1)                            # every connection's sockets closed
    assert maps1 - maps0 < 16, (maps0, maps1)                    # an allocator arena or two, not per connection
    assert rss1 - rss0 < 32 * 1024, (rss0, rss1)                  # KiB: bounded, not per connection
    status, out = s.stop()
    assert status == 0, out
    assert "Traceback" not in out, out
