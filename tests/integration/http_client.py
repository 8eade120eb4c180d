"""http_client.py: the host side of the serve tests, run inside the test's network namespace.

`python3 http_client.py [--mirage] HOST PORT MODE ...` prints one JSON object:
  seq N PATH         N requests one after another
  conc N C PATH      N requests, C at a time (threads)
  get PATH           one request; its status line and body (or the error)
Every response is checked against what the lwIP example must answer (examples/httpd/httpd.c), or
with --mirage what ../shared/ocaml-mirage/mirage_http8080.hvt answers (its README); every socket
has a timeout.
"""
import json
import re
import socket
import sys
import threading
import time

BODY_SIZE = 1900
TIMEOUT_S = 15


MIRAGE = False          # --mirage: the MirageOS example's answer


def expected_body(path: str, served: int) -> bytes:
    if MIRAGE:
        return f"mirage example: served by this VM instance: {served}\n".encode()
    head = f"ukvm lwIP httpd\nrequests served by this VM instance: {served}\npath: {path}\n".encode()
    filler = bytes(ord("a") + i % 26 for i in range(len(head), BODY_SIZE - 1))
    return head + filler + b"\n"


def read_all(s) -> bytes:
    """What the server sends until it closes (at most 1 MiB; the socket's timeout bounds the wait)."""
    data = bytearray()
    while len(data) < 1 << 20:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def get(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """(status line, body) of GET path; raises OSError/ValueError on anything else."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = read_all(s)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete response: {data[:80]!r}")
    m = re.search(rb"Content-Length: (\d+)", head)
    if not m or int(m.group(1)) != len(body):
        raise ValueError("Content-Length does not match the body")
    return head.split(b"\r\n")[0], body


def check(host: str, port: int, path: str) -> tuple[bool, int, float, str]:
    """(response correct, the instance's request count, seconds, error)."""
    t0 = time.perf_counter()
    try:
        status, body = get(host, port, path)
    except (OSError, ValueError) as e:
        return False, 0, time.perf_counter() - t0, str(e)
    took = time.perf_counter() - t0
    m = re.search(rb"instance: (\d+)\n", body)
    served = int(m.group(1)) if m else 0
    ok = status == b"HTTP/1.0 200 OK" and body == expected_body(path, served)
    return ok, served, took, "" if ok else f"unexpected response {status!r} {body[:120]!r}"


def main() -> None:
    global MIRAGE
    if sys.argv[1] == "--mirage":
        MIRAGE = True
        del sys.argv[1]
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    results = []
    started = time.perf_counter()
    if mode == "get":
        try:
            status, body = get(host, port, sys.argv[4])
            print(json.dumps({"status": status.decode(), "body": body.decode(errors="replace")}))
        except (OSError, ValueError) as e:
            print(json.dumps({"error": str(e)}))
        return
    if mode == "seq":
        n, path = int(sys.argv[4]), sys.argv[5]
        results = [check(host, port, f"{path}{i}") for i in range(n)]
    elif mode == "conc":
        n, c, path = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        lock = threading.Lock()
        todo = iter(range(n))

        def worker():
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                r = check(host, port, f"{path}{i}")
                with lock:
                    results.append(r)
        threads = [threading.Thread(target=worker) for _ in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    print(json.dumps({"ok": sum(r[0] for r in results), "total": len(results),
                      "served": sorted({r[1] for r in results}),
                      "errors": [r[3] for r in results if not r[0]][:5],
                      "seconds": [r[2] for r in results], "elapsed": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
