"""serve/warmup.py: boot the unikernel once and snapshot it when it is ready to answer.

"Ready" is proved, not guessed (docs/serve.md): the guest boots on a switch port of its own; at
its first idle POLL the warm-up begins. A SYN from the host's address (on a port no connection
uses) is sent to the guest's port, again at growing intervals until the guest answers it with a
SYN-ACK; every ARP request the guest makes for the host is answered as the switch will answer
it. The SYN-ACK shows that the listener exists and that the guest knows the host's MAC; the
half-open connection is then reset (RST with ACK: MirageOS's stack ignores a bare RST in
SYN-RECEIVED and would retransmit its SYN-ACK from every clone), so the application never sees
it (it accepts only complete handshakes). Once the guest has read the reset and waits again with nothing pending (the next
idle POLL), the snapshot is taken: every clone starts with the listener up and the host in its
ARP cache, and answers a client's first SYN at once. Nothing here knows which guest it runs.
"""
from __future__ import annotations

import random
import select
import threading
import time

from ukvm.errors import UkvmError
from ukvm.machine.snapshot import Snapshot
from ukvm.machine.vm import VM
from ukvm.serve.frames import TCP_ACK, TCP_RST, TCP_SYN, parse_tcp, tcp_frame
from ukvm.serve.switch import REPLY, Switch

READY_TIMEOUT_S = 30.0         # boot to first idle POLL, and again for the warm-up
FIRST_RETRY_S = 0.02           # SYN retransmission: 20 ms, doubling up to 0.5 s
LAST_RETRY_S = 0.5
SETTLE_S = 2.0                 # after the reset: the guest's next idle POLL, at most this long


class WarmupError(UkvmError):
    pass


def boot_and_snapshot(vm: VM, backend_fd: int, sock, switch: Switch) -> Snapshot:
    """Run `vm` (whose only NIC's other end is `sock`) until it is ready to answer; its snapshot.
    `switch` knows the guest's MAC, address and port and the host's."""
    result: dict = {}
    booted = threading.Event()
    settled = threading.Event()
    warmed = threading.Event()

    def first_idle() -> None:
        vm.core.on_idle = None           # from now on its POLLs wait as usual
        booted.set()

    def idle_after_reset() -> None:
        # The reset was sent before `warmed` was set: nothing readable now means it was read.
        if warmed.is_set() and not _readable(backend_fd):
            vm.core.on_idle = None
            settled.set()
            vm.request_stop()

    def run() -> None:
        try:
            result["status"] = vm.run()
        except BaseException as e:       # noqa: BLE001 (handed to the main thread)
            result["error"] = e
        finally:
            booted.set()

    vm.core.enable_wake()
    vm.core.on_idle = first_idle
    thread = threading.Thread(target=run, name="ukvm-warmup", daemon=True)
    thread.start()
    try:
        if not booted.wait(READY_TIMEOUT_S):
            raise WarmupError(f"the unikernel did not wait for network input within {READY_TIMEOUT_S:.0f} s")
        _check_running(result)
        _handshake(sock, switch, result)
        warmed.set()
        vm.core.on_idle = idle_after_reset
        if not settled.wait(SETTLE_S) and not _readable(backend_fd):
            vm.request_stop()            # it read the reset, then slept in a POLL: that is idle too
        thread.join(READY_TIMEOUT_S)
        if thread.is_alive():
            raise WarmupError("the unikernel did not stop after its warm-up connection")
        if "error" in result:
            raise result["error"]
        if result.get("status") is not None:
            raise WarmupError(f"the unikernel exited with status {result['status']} during its warm-up")
        return vm.snapshot()
    finally:
        if thread.is_alive():
            vm.request_stop()
            thread.join(5)


def _handshake(sock, switch: Switch, result: dict) -> None:
    """Send SYNs until the guest answers one with a SYN-ACK, then reset that connection."""
    rng = random.Random()
    deadline = time.monotonic() + READY_TIMEOUT_S
    interval = FIRST_RETRY_S
    while time.monotonic() < deadline:
        port, isn = rng.randrange(1024, 65536), rng.getrandbits(32)
        sock.send(tcp_frame(switch.tap_mac, switch.guest_mac, switch.host_ip, switch.guest_ip, port,
                            switch.guest_port, isn, 0, TCP_SYN))
        retry = time.monotonic() + interval
        while (left := retry - time.monotonic()) > 0:
            _check_running(result)
            if not select.select([sock], [], [], min(left, 0.05))[0]:
                continue
            frame = sock.recv(65536)
            action, value = switch.from_clone(frame, port)
            if action == REPLY:                          # its ARP request for the host
                sock.send(value)
                continue
            tcp = parse_tcp(frame)
            if tcp is None or tcp.dport != port or tcp.sport != switch.guest_port:
                continue                                 # announcements, neighbour discovery
            if tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK and tcp.ack == (isn + 1) & 0xFFFFFFFF:
                sock.send(tcp_frame(switch.tap_mac, switch.guest_mac, switch.host_ip, switch.guest_ip, port,
                                    switch.guest_port, isn + 1, tcp.seq + 1, TCP_RST | TCP_ACK))
                return
            # Anything else (a reset: no listener yet) waits for the next attempt.
        interval = min(interval * 2, LAST_RETRY_S)
    raise WarmupError(f"the unikernel did not accept a connection on port {switch.guest_port} "
                      f"within {READY_TIMEOUT_S:.0f} s")


def _check_running(result: dict) -> None:
    """Raise what ended the guest's run, if it ended."""
    if "error" in result:
        raise result["error"]
    if "status" in result:
        if result["status"] is None:
            raise WarmupError("the unikernel stopped during its warm-up")
        raise WarmupError(f"the unikernel exited with status {result['status']} before it was ready")


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
