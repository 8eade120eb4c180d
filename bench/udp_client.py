"""udp_client.py COUNT SIZE WINDOW: UDP echo load against 10.0.0.2:7 with at most WINDOW datagrams
in flight; every reply is compared with what was sent. Prints `pps N`. Bounded by timeouts."""
import os
import socket
import sys
import time

count, size, window = (int(a) for a in sys.argv[1:4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("10.0.0.2", 7))
body = os.urandom(max(0, size - 4))
pending = {}
sent = received = 0
t0 = time.perf_counter()
while received < count:
    while sent < count and len(pending) < window:
        payload = sent.to_bytes(4, "big") + body
        pending[sent] = payload
        s.send(payload)
        sent += 1
    data = s.recv(65536)
    if pending.pop(int.from_bytes(data[:4], "big"), None) != data:
        sys.exit("reply differs from request")
    received += 1
print(f"pps {int(count / (time.perf_counter() - t0))}")
