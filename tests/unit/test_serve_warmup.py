"""serve's warm-up handshake (serve/warmup.py) against a scripted guest on a socket pair: no KVM.

The guest refuses the first SYN (no listener yet), asks ARP for the host before it answers the
next one, and answers with a SYN-ACK; the warm-up must retry on a new port, answer the ARP as
the switch does, and end the half-open connection with a reset the guest's stack accepts."""
import socket
import threading

import pytest

from ukvm.serve import frames, warmup
from ukvm.serve.switch import Switch

GUEST_MAC, TAP_MAC = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd02")
GUEST_IP, HOST_IP = socket.inet_aton("10.0.0.2"), socket.inet_aton("10.0.0.1")
PORT = 8080


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_warmup_retries_answers_arp_and_resets_the_handshake(pair, monkeypatch):
    # Retries slow enough that this scripted guest (a thread, on a loaded host) answers the second
    # SYN before a third is sent: the script expects exactly two.
    monkeypatch.setattr(warmup, "FIRST_RETRY_S", 2.0)
    monkeypatch.setattr(warmup, "LAST_RETRY_S", 4.0)
    switch_end, guest_end = pair
    seen = {"syns": [], "arp_reply": None, "reset": None}

    def guest():
        for attempt in range(2):
            syn = frames.parse_tcp(guest_end.recv(2048))
            assert syn.flags == frames.TCP_SYN and syn.dport == PORT and syn.src_ip == HOST_IP
            seen["syns"].append(syn)
            if attempt == 0:            # no listener yet: refused
                guest_end.send(frames.tcp_frame(GUEST_MAC, TAP_MAC, GUEST_IP, HOST_IP, PORT, syn.sport, 0,
                                                syn.seq + 1, frames.TCP_RST | frames.TCP_ACK))
                continue
            guest_end.send(frames.arp_request(GUEST_MAC, GUEST_IP, HOST_IP))
            seen["arp_reply"] = guest_end.recv(2048)
            guest_end.send(frames.tcp_frame(GUEST_MAC, TAP_MAC, GUEST_IP, HOST_IP, PORT, syn.sport, 5000,
                                            syn.seq + 1, frames.TCP_SYN | frames.TCP_ACK))
            seen["reset"] = frames.parse_tcp(guest_end.recv(2048))

    def scripted():      # an assertion in the thread fails the test, not just a warning
        try:
            guest()
        except BaseException as e:   # noqa: BLE001
            seen["error"] = e
    t = threading.Thread(target=scripted)
    t.start()
    warmup._handshake(switch_end, Switch(GUEST_IP, GUEST_MAC, PORT, HOST_IP, TAP_MAC), {})
    t.join(10)
    assert not t.is_alive()
    if "error" in seen:
        raise seen["error"]
    first, second = seen["syns"]
    assert first.sport != second.sport                       # each attempt on a port of its own
    oper, sha, spa, tha, tpa = frames.parse_arp(seen["arp_reply"])
    assert (oper, sha, spa, tha, tpa) == (frames.ARP_REPLY, TAP_MAC, HOST_IP, GUEST_MAC, GUEST_IP)
    rst = seen["reset"]
    assert rst.flags == frames.TCP_RST | frames.TCP_ACK      # with ACK: a stack in SYN-RECEIVED takes it
    assert (rst.sport, rst.seq, rst.ack) == (second.sport, (second.seq + 1) & 0xFFFFFFFF, 5001)


def test_a_guest_that_never_answers_is_one_error(pair, monkeypatch):
    switch_end, _guest_end = pair
    monkeypatch.setattr(warmup, "READY_TIMEOUT_S", 0.3)
    with pytest.raises(warmup.WarmupError, match="did not accept a connection on port 8080 within 0 s"):
        warmup._handshake(switch_end, Switch(GUEST_IP, GUEST_MAC, PORT, HOST_IP, TAP_MAC), {})


def test_a_guest_that_exits_during_the_warmup_is_reported(pair):
    switch_end, _guest_end = pair
    with pytest.raises(warmup.WarmupError, match="exited with status 3 before it was ready"):
        warmup._handshake(switch_end, Switch(GUEST_IP, GUEST_MAC, PORT, HOST_IP, TAP_MAC), {"status": 3})

