"""chaos_client.py: clients doing everything clients do, against `ukvm serve` (test_serve_guests.py).

`python3 chaos_client.py [--mirage] HOST PORT N CONCURRENCY SEED [HOLD]` runs N client behaviours
on CONCURRENCY threads, chosen by a seeded generator, while HOLD more connections send nothing
and wait for the server to end them (its --deadline); prints one JSON object: connections made,
well-formed requests sent and answered correctly, holders ended by the server, the first errors. Behaviours: a normal
request; the same after a half-close; sent slowly; closed right after sending; reset in the
middle of the request; connected, nothing sent, closed; connected and gone at once; reset at
once; a burst of connections opened together and dropped; garbage. Every socket has a timeout;
the run is bounded by N.
"""
import json
import random
import socket
import struct
import sys
import threading
import time

import http_client

TIMEOUT_S = 15
BURST = 16


def connect(host, port):
    s = socket.create_connection((host, port), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def check_response(data: bytes, path: str) -> str:
    """'' when `data` is the right answer to GET path from a fresh instance, else what is wrong."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.0 200 OK"):
        return f"no complete response: {data[:60]!r}"
    if body != http_client.expected_body(path, 1):
        return f"wrong body (not a fresh instance?): {body[:80]!r}"
    return ""


class Run:
    def __init__(self, host, port, seed):
        self.host, self.port = host, port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.connections = self.well_formed = self.answered = 0
        self.errors: list[str] = []
        self.kinds: dict[str, int] = {}

    def note(self, connections=0, well_formed=0, answered=0, error=""):
        with self.lock:
            self.connections += connections
            self.well_formed += well_formed
            self.answered += answered
            if error and len(self.errors) < 10:
                self.errors.append(error)

    def request(self, i: int, how: str) -> None:
        path = f"/chaos/{how}/{i}"
        request = f"GET {path} HTTP/1.0\r\nHost: chaos\r\n\r\n".encode()
        try:
            s = connect(self.host, self.port)
        except OSError as e:
            self.note(error=f"connect: {e}")
            return
        self.note(connections=1, well_formed=1)
        try:
            if how == "slow":
                for k in range(0, len(request), 6):
                    s.sendall(request[k:k + 6])
                    time.sleep(0.004)
            else:
                s.sendall(request)
            if how == "half_close":
                s.shutdown(socket.SHUT_WR)
            problem = check_response(http_client.read_all(s), path)
        except OSError as e:
            problem = f"{how}: {e}"
        finally:
            s.close()
        self.note(answered=0 if problem else 1, error=problem and f"{how} {path}: {problem}")

    def misbehave(self, how: str) -> None:
        if how == "burst":
            socks = []
            for _ in range(BURST):
                try:
                    socks.append(connect(self.host, self.port))
                except OSError as e:
                    self.note(error=f"connect: {e}")
            self.note(connections=len(socks))
            for s in socks:
                s.close()
            return
        try:
            s = connect(self.host, self.port)
        except OSError as e:
            self.note(error=f"connect: {e}")
            return
        self.note(connections=1)
        try:
            if how == "close_early":
                s.sendall(b"GET /early HTTP/1.0\r\n\r\n")
                s.close()
            elif how == "rst_mid_request":
                s.sendall(b"GET /half-a-req")
                rst(s)
            elif how == "nothing":
                time.sleep(0.05)
                s.close()
            elif how == "vanish":
                s.close()
            elif how == "rst_at_once":
                rst(s)
            elif how == "garbage":
                s.sendall(bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 300))) + b"\r\n\r\n")
                s.settimeout(TIMEOUT_S)
                http_client.read_all(s)              # any answer or none: only that it ends
                s.close()
        except OSError:
            s.close()                    # the server may reset a misbehaving client: allowed

    BEHAVIOURS = [("normal", 30), ("half_close", 10), ("slow", 5), ("close_early", 10), ("rst_mid_request", 10),
                  ("nothing", 8), ("vanish", 10), ("rst_at_once", 8), ("burst", 2), ("garbage", 7)]

    def plan(self, n: int) -> list[str]:
        names, weights = zip(*self.BEHAVIOURS)
        return self.rng.choices(names, weights, k=n)


def main() -> None:
    if sys.argv[1] == "--mirage":
        http_client.MIRAGE = True
        del sys.argv[1]
    host, port, n, concurrency, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    run = Run(host, port, seed)
    plan = run.plan(n)
    todo = iter(enumerate(plan))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, how = item
            with lock:
                run.kinds[how] = run.kinds.get(how, 0) + 1
            if how in ("normal", "half_close", "slow"):
                run.request(i, how)
            else:
                run.misbehave(how)
    held = []

    def hold():
        try:
            s = connect(host, port)
        except OSError as e:
            run.note(error=f"connect: {e}")
            return
        run.note(connections=1)
        try:
            s.settimeout(60)
            http_client.read_all(s)                  # EOF (or a reset) when the server's deadline ends it
            held.append(True)
        except socket.timeout:
            run.note(error="a silent connection was never ended by the server")
        except OSError:
            held.append(True)
        finally:
            s.close()
    hold_count = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    started = time.monotonic()
    threads = [threading.Thread(target=hold) for _ in range(hold_count)]
    threads += [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    print(json.dumps({"connections": run.connections, "well_formed": run.well_formed, "answered": run.answered,
                      "held_and_ended": len(held),
                      "errors": run.errors, "kinds": run.kinds, "elapsed": time.monotonic() - started}))


if __name__ == "__main__":
    main()
