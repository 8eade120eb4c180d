"""sandbox/serve_confinement.py: `ukvm serve` set up, then confined (docs/security.md).

The one call serve makes (serve/main.py): confined_start(server, user) instead of server.start().
Before set-up, while the process has one thread: a mount namespace of its own and no
capabilities to inherit (privileges.prepare). Then server.start() makes everything the loop will
use (TAP, sockets, the snapshot, the clones, the metrics thread). Then, before the loop: every
module the loop may still import is imported, the filter is compiled, the root becomes an empty
read-only tmpfs, the process becomes `user`, loses every capability and its dumpability, and the
filter goes on every thread.

The filter (policy.py) is the union of: the interpreter's needs; for each clone, what its modules
declare (KVM_RUN on its vCPU, its NIC's socket, its wake-up eventfd...) and what the clone
machinery declares (reset: the dirty log, the snapshot's pages, the register sets); the loop's
own (epoll, the TAP, TCP sockets, threads for the metrics server). The server is read through
serve_parts(), the one place that knows serve's attribute names.
"""
from __future__ import annotations

import sys

from ukvm.sandbox.bpf import compile_needs
from ukvm.sandbox.needs import Needs

DEFAULT_USER = "nobody"
# Imported before the filter: once confined no file can be opened, so no module can be imported.
# What the loop, the metrics server and the drain may import lazily; a module is imported only
# when its package is in use already (prometheus_client only with --metrics: it costs 5 MB).
# tests/integration/test_sandbox_serve.py serves, scrapes and drains under the filter.
PRELOAD = ("prometheus_client.exposition", "prometheus_client.openmetrics.exposition", "wsgiref.simple_server",
           "http.server", "email.utils", "urllib.parse", "gzip", "zlib", "encodings.idna", "encodings.latin_1",
           "socketserver", "selectors", "ukvm.machine.supervisor", "ukvm.serve.relay", "ukvm.serve.pool")
NEEDED_FOR = {"wsgiref.simple_server": "prometheus_client", "http.server": "prometheus_client",
              "email.utils": "prometheus_client", "gzip": "prometheus_client", "socketserver": "prometheus_client",
              "encodings.idna": "prometheus_client"}


def serve_parts(server) -> tuple[list, set[int], set[int]]:
    """(the clones' VMs, the loop's epoll fds, the fds the loop reads and writes)."""
    vms = [clone.vm for clone in server.clones if clone.vm is not None]
    return vms, {server.sel.fileno()}, {server.tap_fd, server.report_fd}


def serve_needs(server) -> Needs:
    from ukvm.machine.snapshot import clone_needs
    from ukvm.sandbox.policy import interpreter_needs, serve_loop_needs, vm_needs
    vms, loop_fds, rw_fds = serve_parts(server)
    parts = [interpreter_needs(), serve_loop_needs(loop_fds, rw_fds)]
    for vm in vms:
        parts += [vm_needs(vm), clone_needs(vm)]
    return Needs.union(parts)


def _preload() -> None:
    import importlib
    for name in PRELOAD:
        if NEEDED_FOR.get(name, name.split(".")[0]) not in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            pass           # an optional dependency not installed (prometheus_client without --metrics)


def confined_start(server, user: str | None = DEFAULT_USER, sandboxed: bool = True) -> None:
    """server.start(), confined as the module docstring says; with `sandboxed` False, only
    server.start() and a warning (the debugging switch --x-no-sandbox)."""
    from ukvm.sandbox import privileges
    if not sandboxed:
        server.start()
        print("ukvm serve: WARNING: --x-no-sandbox: serve runs as root, unconfined; a compromised "
              "tender can do anything root can.", file=sys.stderr, flush=True)
        return
    uid, gid = privileges.lookup_user(user or DEFAULT_USER)
    privileges.prepare()
    server.start()
    _preload()
    program = compile_needs(serve_needs(server))
    privileges.confine(uid, gid, program)
