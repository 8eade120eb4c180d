"""serve/main.py: `ukvm serve ARGS`: configuration, set-up and confinement, the loop, the drain."""
from __future__ import annotations

import signal
import sys

from ukvm.errors import UkvmError, UsageError
from ukvm.serve.config import USAGE, ServeConfig

# Every vCPU exit needs the GIL back; with the default 5 ms switch interval a busy event loop
# made exits and resets wait (measured here: reset p50 310 -> 170 us, 16 connections at once
# 420 -> 530 requests/s at 0.5 ms).
SWITCH_INTERVAL_S = 0.0005


def serve_main(argv: list[str]) -> int:
    """`ukvm serve ...`; returns the exit status (0 after a drain on SIGTERM or SIGINT)."""
    from ukvm.sandbox import confined_start
    from ukvm.serve.server import Server
    err = sys.stderr
    try:
        config = ServeConfig.from_argv(argv)
    except UsageError as e:
        print(f"ukvm serve: {e}", file=err)
        if e.show_usage:
            print(USAGE, file=err)
        return 2
    if config is None:
        print(USAGE, file=err)
        return 0
    server = Server(config)
    try:
        try:
            # TAP, sockets, snapshot, clones: everything the loop will use; then confined (one call).
            confined_start(server, config.user, not config.no_sandbox)
        except UkvmError as e:
            print(f"ukvm serve: {e}", file=err)
            return 1
        except KeyboardInterrupt:
            print("ukvm serve: interrupted during start-up", file=err)
            return 130
        # Confined from here on: nothing after this point opens a file or makes a KVM object.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        signal.signal(signal.SIGTERM, lambda *_: server.request_drain())
        signal.signal(signal.SIGINT, lambda *_: server.request_drain())
        # ukvm-oci starts serve with them blocked, so that none sent earlier is lost (oci/create.py).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        host, port = server.address[:2]
        print(f"ukvm serve: listening on {host}:{port}, guest {server.guest_ip}:{server.guest_port} "
              f"on {server.tap_name}, {len(server.clones)} clones", file=err, flush=True)
        server.serve_forever()
        summary = server.summary()
    except Exception as e:        # noqa: BLE001 (one line, never a traceback; the drain is done)
        print(f"ukvm serve: {e}" if isinstance(e, UkvmError) else f"ukvm serve: internal error: "
              f"{type(e).__name__}: {e}", file=err)
        return 1
    finally:
        server.close()
    if server.failure is not None:
        print(f"ukvm serve: stopped after a failure: {summary}", file=err, flush=True)
        return 1
    print(f"ukvm serve: drained: {summary}", file=err, flush=True)
    return 0
