"""serve's switch (serve/switch.py) and frame helpers (serve/frames.py) on crafted frames.

The frames here are assembled byte by byte with struct, not with the helpers under test, except
where a helper's own output is the subject (then it is checked field by field)."""
import socket
import struct

import pytest

from ukvm.serve import frames
from ukvm.serve.switch import (ARP_IGNORED, DROP, FORWARD, NO_CONNECTION, NOT_FOR_GUEST, NOT_OWN_CONNECTION, NOT_TCP,
                               REPLY, SPOOFED, TOO_SHORT, WRONG_ADDRESS, Switch)

GUEST_MAC = bytes.fromhex("02aabbccdd01")
TAP_MAC = bytes.fromhex("02aabbccdd02")
OTHER_MAC = bytes.fromhex("02aabbccdd03")
BCAST = b"\xff" * 6
GUEST_IP = socket.inet_aton("10.0.0.2")
HOST_IP = socket.inet_aton("10.0.0.1")
OTHER_IP = socket.inet_aton("10.0.0.9")
PORT = 80


@pytest.fixture
def switch():
    return Switch(GUEST_IP, GUEST_MAC, PORT, HOST_IP, TAP_MAC)


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(dst, src, oper, sha, spa, tha, tpa, htype=1, ptype=0x0800):
    return eth(dst, src, 0x0806, struct.pack("!HHBBH6s4s6s4s", htype, ptype, 6, 4, oper, sha, spa, tha, tpa))


def ipv4_tcp(dst_mac, src_mac, src_ip, dst_ip, sport, dport, flags=0x02, frag=0x4000, proto=6):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 8192, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, frag, 64, proto, 0, src_ip, dst_ip)
    return eth(dst_mac, src_mac, 0x0800, ip + tcp)


def ipv6_neighbour_solicitation(src_mac):
    body = struct.pack("!IHBB16s16s", 0x60000000, 32, 58, 255, b"\xfe\x80" + b"\0" * 14, b"\xff\x02" + b"\0" * 14)
    return eth(b"\x33\x33\xff\x00\x00\x01", src_mac, 0x86DD, body + bytes([135, 0]) + b"\0" * 30)


# --- from the TAP ----------------------------------------------------------------------------
def test_host_arp_for_the_guest_is_answered_with_the_guests_mac(switch):
    request = arp(BCAST, TAP_MAC, 1, TAP_MAC, HOST_IP, b"\0" * 6, GUEST_IP)
    action, reply = switch.from_tap(request)
    assert action == REPLY
    assert reply[:6] == TAP_MAC and reply[6:12] == GUEST_MAC and reply[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", reply[14:42])
    assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 2)
    assert (sha, spa, tha, tpa) == (GUEST_MAC, GUEST_IP, TAP_MAC, HOST_IP)


@pytest.mark.parametrize("frame", [
    arp(BCAST, TAP_MAC, 1, TAP_MAC, HOST_IP, b"\0" * 6, OTHER_IP),          # another address
    arp(GUEST_MAC, TAP_MAC, 2, TAP_MAC, HOST_IP, GUEST_MAC, GUEST_IP),      # a reply, not a request
    arp(BCAST, TAP_MAC, 1, TAP_MAC, OTHER_IP, b"\0" * 6, GUEST_IP),         # not from the host's address
    arp(BCAST, TAP_MAC, 1, TAP_MAC, HOST_IP, b"\0" * 6, GUEST_IP, ptype=0x86DD),
    arp(BCAST, TAP_MAC, 1, TAP_MAC, HOST_IP, b"\0" * 6, GUEST_IP)[:30],    # truncated
])
def test_other_arp_from_the_host_is_dropped(switch, frame):
    assert switch.from_tap(frame) == (DROP, ARP_IGNORED)


def test_tcp_to_the_guests_port_is_forwarded_to_the_connection_of_its_source_port(switch):
    frame = ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT)
    assert switch.from_tap(frame) == (FORWARD, 41234)


@pytest.mark.parametrize("frame, reason", [
    (b"\x01\x02", TOO_SHORT),
    (ipv4_tcp(OTHER_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT), NOT_FOR_GUEST),
    (eth(b"\x33\x33\0\0\0\x16", TAP_MAC, 0x86DD, b"\0" * 60),
     NOT_FOR_GUEST),                                                          # the host's MLD report
    (ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, 22), WRONG_ADDRESS),
    (ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, OTHER_IP, 41234, PORT), WRONG_ADDRESS),
    (ipv4_tcp(GUEST_MAC, TAP_MAC, OTHER_IP, GUEST_IP, 41234, PORT), WRONG_ADDRESS),
    (ipv4_tcp(BCAST, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT), WRONG_ADDRESS),   # TCP to broadcast
    (ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT, proto=17), NOT_TCP),
    (ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT, frag=0x0010), NOT_TCP),  # a later fragment
    (ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 41234, PORT)[:40], NOT_TCP),          # header cut short
])
def test_everything_else_from_the_tap_is_dropped_with_its_reason(switch, frame, reason):
    assert switch.from_tap(frame) == (DROP, reason)


# --- from a clone ----------------------------------------------------------------------------
def test_a_clones_arp_for_the_host_is_answered_with_the_taps_mac(switch):
    request = arp(BCAST, GUEST_MAC, 1, GUEST_MAC, GUEST_IP, b"\0" * 6, HOST_IP)
    for conn_port in (41234, None):             # answered whether or not it serves a connection
        action, reply = switch.from_clone(request, conn_port)
        assert action == REPLY
        assert reply[:6] == GUEST_MAC and reply[6:12] == TAP_MAC
        sha, spa, tha, tpa = struct.unpack("!6s4s6s4s", reply[22:42])
        assert (sha, spa, tha, tpa) == (TAP_MAC, HOST_IP, GUEST_MAC, GUEST_IP)
        assert struct.unpack("!H", reply[20:22])[0] == 2


@pytest.mark.parametrize("frame", [
    arp(BCAST, GUEST_MAC, 1, GUEST_MAC, GUEST_IP, b"\0" * 6, GUEST_IP),     # gratuitous: must not be answered
    arp(BCAST, GUEST_MAC, 1, GUEST_MAC, GUEST_IP, b"\0" * 6, OTHER_IP),     # another host
    arp(BCAST, GUEST_MAC, 1, GUEST_MAC, OTHER_IP, b"\0" * 6, HOST_IP),      # spoofed sender address
    arp(BCAST, GUEST_MAC, 1, OTHER_MAC, GUEST_IP, b"\0" * 6, HOST_IP),      # spoofed sender MAC
    arp(TAP_MAC, GUEST_MAC, 2, GUEST_MAC, GUEST_IP, TAP_MAC, HOST_IP),      # a reply
])
def test_other_arp_from_a_clone_is_dropped(switch, frame):
    assert switch.from_clone(frame, 41234) == (DROP, ARP_IGNORED)


def test_a_clone_may_answer_its_own_connection(switch):
    frame = ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, HOST_IP, PORT, 41234, flags=0x12)
    assert switch.from_clone(frame, 41234) == (FORWARD, None)


@pytest.mark.parametrize("frame, conn_port, reason", [
    (b"", 41234, TOO_SHORT),
    (ipv4_tcp(TAP_MAC, OTHER_MAC, GUEST_IP, HOST_IP, PORT, 41234), 41234, SPOOFED),
    (ipv4_tcp(TAP_MAC, GUEST_MAC, OTHER_IP, HOST_IP, PORT, 41234), 41234, SPOOFED),
    (ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, HOST_IP, 81, 41234), 41234, SPOOFED),    # another of its ports
    (ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, HOST_IP, PORT, 41234), None, NO_CONNECTION),   # an idle clone
    (ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, HOST_IP, PORT, 41235), 41234, NOT_OWN_CONNECTION),  # a neighbour's
    (ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, OTHER_IP, PORT, 41234), 41234, NOT_OWN_CONNECTION),
    (ipv4_tcp(BCAST, GUEST_MAC, GUEST_IP, HOST_IP, PORT, 41234), 41234, NOT_OWN_CONNECTION),
    (ipv4_tcp(TAP_MAC, GUEST_MAC, GUEST_IP, HOST_IP, PORT, 41234, proto=17), 41234, NOT_TCP),
    (ipv6_neighbour_solicitation(GUEST_MAC), 41234, NOT_TCP),
])
def test_a_clone_is_confined_to_its_own_connection(switch, frame, conn_port, reason):
    assert switch.from_clone(frame, conn_port) == (DROP, reason)


def test_any_bytes_get_an_answer_not_an_exception(switch):
    """Frames of every length, cut from valid ones and filled with noise: always a decision."""
    import random
    rng = random.Random(7)
    seeds = [ipv4_tcp(GUEST_MAC, TAP_MAC, HOST_IP, GUEST_IP, 1, PORT), arp(BCAST, TAP_MAC, 1, TAP_MAC, HOST_IP,
             b"\0" * 6, GUEST_IP), ipv6_neighbour_solicitation(GUEST_MAC)]
    for _ in range(3000):
        frame = bytearray(rng.choice(seeds))[:rng.randrange(0, 80)]
        for _ in range(rng.randrange(0, 4)):
            if frame:
                frame[rng.randrange(len(frame))] = rng.randrange(256)
        frame = bytes(frame)
        assert switch.from_tap(frame)[0] in (REPLY, FORWARD, DROP)
        assert switch.from_clone(frame, rng.choice([None, 1]))[0] in (REPLY, FORWARD, DROP)


# --- frame helpers ---------------------------------------------------------------------------
def test_tcp_frame_has_valid_checksums_and_the_fields_asked_for():
    f = frames.tcp_frame(TAP_MAC, GUEST_MAC, HOST_IP, GUEST_IP, 40000, PORT, 0xFFFFFFFF + 5, 7,
                         frames.TCP_SYN, payload=b"abc")
    assert f[:6] == GUEST_MAC and f[6:12] == TAP_MAC and f[12:14] == b"\x08\x00"
    ip, tcp = f[14:34], f[34:]
    assert frames.checksum(ip) == 0                                   # a header with its checksum sums to 0
    pseudo = HOST_IP + GUEST_IP + struct.pack("!BBH", 0, 6, len(tcp))
    assert frames.checksum(pseudo + tcp) == 0
    assert struct.unpack("!HHII", tcp[:12]) == (40000, PORT, 4, 7)    # sequence number wrapped to 32 bits
    assert tcp[13] == 0x02 and tcp[20:] == b"abc"
    parsed = frames.parse_tcp(f)
    assert (parsed.src_ip, parsed.dst_ip, parsed.sport, parsed.dport, parsed.seq, parsed.ack, parsed.flags) == \
        (HOST_IP, GUEST_IP, 40000, PORT, 4, 7, 0x02)


def test_checksum_matches_rfc1071_example():
    # RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert frames.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert frames.checksum(b"\x01") == 0xFFFF - 0x0100              # odd length: padded with a zero byte
