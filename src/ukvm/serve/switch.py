"""serve/switch.py: which frames may pass between the host's TAP and the clones, and ARP.

Every clone has the snapshot's MAC and IP, so frames cannot be switched by address: a frame
from the TAP to the guest's TCP port goes to the clone serving the connection whose host-side
port is the frame's source port (Server looks that up). The switch answers
ARP itself in both directions: the guest's MAC to the host, the TAP's MAC to a clone, each only
for the one address that side may reach. A clone may send the host only TCP from the guest's
address and port to its own connection's port. Everything else is dropped, with a reason that
the metrics count: a clone cannot reach another clone's connection, or anything else on the host.

IPv6 (a guest's neighbour discovery, MLD, router solicitations) is dropped both ways: serve's
connections are IPv4, so a clone needs none of it to answer its own (docs/serve.md).

Pure: decisions on bytes, no sockets (tests/unit/test_switch.py feeds it crafted frames).
"""
from __future__ import annotations

from ukvm.serve.frames import (ARP_REQUEST, BROADCAST, ETH_HEADER, ETH_P_ARP, arp_reply, ethertype, parse_arp,
                               parse_tcp)

# The three answers: write a frame back where this one came from, pass it on, or drop it.
REPLY, FORWARD, DROP = "reply", "forward", "drop"

# Drop reasons (the metric's `reason` label).
TOO_SHORT = "too_short"
NOT_FOR_GUEST = "not_for_guest"          # another MAC (the host's multicast, ...)
ARP_IGNORED = "arp_ignored"              # not a request for the one address this side may reach
NOT_TCP = "not_tcp"                      # IPv6, UDP, ICMP, fragments
WRONG_ADDRESS = "wrong_address"          # TCP, but not between the guest's port and the host
NO_CONNECTION = "no_connection"          # from the TAP: no clone serves that port; from a clone: it has none
SPOOFED = "spoofed_source"               # a clone's frame that is not from the guest's MAC
NOT_OWN_CONNECTION = "not_own_connection"
QUEUE_FULL = "queue_full"                # the receiver's queue is full (TCP retransmits)
AFTER_CONNECTION = "after_connection"    # sent by a clone for a connection already over (serve drops these)


class Switch:
    def __init__(self, guest_ip: bytes, guest_mac: bytes, guest_port: int, host_ip: bytes, tap_mac: bytes):
        self.guest_ip, self.guest_mac, self.guest_port = guest_ip, guest_mac, guest_port
        self.host_ip, self.tap_mac = host_ip, tap_mac

    def from_tap(self, frame: bytes) -> tuple[str, object]:
        """(REPLY, frame for the TAP) | (FORWARD, host-side port of the connection) | (DROP, reason)."""
        if len(frame) < ETH_HEADER:
            return DROP, TOO_SHORT
        if frame[:6] != self.guest_mac and frame[:6] != BROADCAST:
            return DROP, NOT_FOR_GUEST
        if ethertype(frame) == ETH_P_ARP:
            arp = parse_arp(frame)
            if arp is None or arp[0] != ARP_REQUEST or arp[4] != self.guest_ip or arp[2] != self.host_ip:
                return DROP, ARP_IGNORED
            return REPLY, arp_reply(frame, self.guest_mac)
        tcp = parse_tcp(frame)
        if tcp is None:
            return DROP, NOT_TCP
        if tcp.dst_ip != self.guest_ip or tcp.src_ip != self.host_ip or tcp.dport != self.guest_port \
                or frame[:6] != self.guest_mac:
            return DROP, WRONG_ADDRESS
        return FORWARD, tcp.sport

    def from_clone(self, frame: bytes, conn_port: int | None) -> tuple[str, object]:
        """A frame from a clone serving the connection with host-side port `conn_port` (None:
        the clone is idle): (REPLY, frame for the clone) | (FORWARD, None) | (DROP, reason)."""
        if len(frame) < ETH_HEADER:
            return DROP, TOO_SHORT
        if frame[6:12] != self.guest_mac:
            return DROP, SPOOFED
        if ethertype(frame) == ETH_P_ARP:
            arp = parse_arp(frame)
            if arp is None or arp[0] != ARP_REQUEST or arp[4] != self.host_ip or arp[1] != self.guest_mac \
                    or arp[2] != self.guest_ip:
                return DROP, ARP_IGNORED
            return REPLY, arp_reply(frame, self.tap_mac)
        tcp = parse_tcp(frame)
        if tcp is None:
            return DROP, NOT_TCP
        if tcp.src_ip != self.guest_ip or tcp.sport != self.guest_port:
            return DROP, SPOOFED
        if conn_port is None:
            return DROP, NO_CONNECTION
        if tcp.dst_ip != self.host_ip or tcp.dport != conn_port or frame[:6] != self.tap_mac:
            return DROP, NOT_OWN_CONNECTION
        return FORWARD, None
