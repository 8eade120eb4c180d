"""serve/frames.py: Ethernet/ARP/IPv4/TCP frames as plain bytes: parsing and building.

Pure functions on bytes, for the switch (switch.py) and the warm-up connection (warmup.py).
Every frame comes from a guest or the host's TAP: any length, any content.
"""
from __future__ import annotations

import struct

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
BROADCAST = b"\xff" * 6
ETH_HEADER = 14
ARP = struct.Struct("!HHBBH6s4s6s4s")    # htype, ptype, hlen, plen, oper, sha, spa, tha, tpa
ARP_REQUEST, ARP_REPLY = 1, 2
IPPROTO_TCP = 6
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class Tcp:
    """The fields of an IPv4 TCP frame the switch and the warm-up look at."""
    __slots__ = ("src_ip", "dst_ip", "sport", "dport", "seq", "ack", "flags")

    def __init__(self, src_ip, dst_ip, sport, dport, seq, ack, flags):
        self.src_ip, self.dst_ip, self.sport, self.dport = src_ip, dst_ip, sport, dport
        self.seq, self.ack, self.flags = seq, ack, flags


def ethertype(frame: bytes) -> int:
    return frame[12] << 8 | frame[13] if len(frame) >= ETH_HEADER else -1


def parse_tcp(frame: bytes) -> Tcp | None:
    """The TCP header fields of an IPv4 frame, or None when it is not a complete TCP header
    (a fragment past the first counts as not TCP: it has no header)."""
    if len(frame) < ETH_HEADER + 20 or ethertype(frame) != ETH_P_IP or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 0xF) * 4
    if ihl < 20 or frame[23] != IPPROTO_TCP or (frame[20] << 8 | frame[21]) & 0x1FFF:
        return None
    l4 = ETH_HEADER + ihl
    if len(frame) < l4 + 20:
        return None
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", frame, l4)
    return Tcp(frame[26:30], frame[30:34], sport, dport, seq, ack, flags)


def parse_arp(frame: bytes):
    """(oper, sha, spa, tha, tpa) of an Ethernet/IPv4 ARP frame, or None."""
    if ethertype(frame) != ETH_P_ARP or len(frame) < ETH_HEADER + ARP.size:
        return None
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = ARP.unpack_from(frame, ETH_HEADER)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return oper, sha, spa, tha, tpa


def arp_reply(request: bytes, mac: bytes) -> bytes:
    """The reply to an ARP request (parse_arp(request) is a request): its target is at `mac`."""
    _oper, sha, spa, _tha, tpa = parse_arp(request)
    return sha + mac + struct.pack("!H", ETH_P_ARP) + ARP.pack(1, ETH_P_IP, 6, 4, ARP_REPLY, mac, tpa, sha, spa)


def arp_request(src_mac: bytes, src_ip: bytes, target_ip: bytes) -> bytes:
    return BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP) + \
        ARP.pack(1, ETH_P_IP, 6, 4, ARP_REQUEST, src_mac, src_ip, b"\0" * 6, target_ip)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, sport: int, dport: int,
              seq: int, ack: int, flags: int, window: int = 65535, payload: bytes = b"") -> bytes:
    """A complete Ethernet/IPv4/TCP frame with correct checksums (no options)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    tcp += payload
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, IPPROTO_TCP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp
