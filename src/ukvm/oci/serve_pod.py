"""oci/serve_pod.py: `ukvm serve` as a pod (`ukvm oci build --serve`).

An image built with --serve carries, beside urunc's keys, `com.ukvm.serve`: the serve options
("guest-port=80,port=8080,metrics-port=9100,pool=2"). ukvm-oci runs such a container as
`ukvm serve` in the pod's network namespace instead of `ukvm run`: the pod's interface keeps the
pod IP, serve listens on it (0.0.0.0:port), and every connection is answered by a fresh clone of
the unikernel. The clones sit behind serve's own TAP and switch on a link-local network inside the
pod's namespace (169.254.77.0/24: never a pod or service range), told their address on the
command line the way urunc tells Solo5 guests (`--ipv4=... --ipv4-gateway=...`). Prometheus
metrics are served on metrics-port; the pod template's `prometheus.io/*` annotations point
scrapers at it (docs/kubernetes.md).

Nothing imported at module level: ukvm-oci imports this on its hot path (create of every container).
"""
from __future__ import annotations

UKVM_SERVE = "com.ukvm.serve"
GUEST_NET = "169.254.77"
OPTIONS = {"guest-port": None, "port": None, "metrics-port": 9100, "pool": 2}
MAX_POOL = 1024                     # `ukvm oci build --pool`'s limit


def parse(text: str, what: str = UKVM_SERVE) -> dict[str, int]:
    """com.ukvm.serve's value -> options (every one a number; unknown names refused); `what`
    names the source in errors."""
    from ukvm.errors import UsageError
    opts = dict(OPTIONS)
    for item in filter(None, text.split(",")):
        name, eq, value = item.partition("=")
        if not eq or name not in OPTIONS or not (value.isascii() and value.isdigit() and len(value) <= 6):
            raise UsageError(f"{what}: bad option {item!r}", show_usage=False)
        opts[name] = int(value)
    if opts["guest-port"] is None:
        raise UsageError(f"{what}: guest-port is required", show_usage=False)
    if opts["port"] is None:
        opts["port"] = opts["guest-port"]
    for name in ("guest-port", "port", "metrics-port"):
        if not 0 < opts[name] < 65536:
            raise UsageError(f"{what}: {name}={opts[name]} is not a port", show_usage=False)
    if not 1 <= opts["pool"] <= MAX_POOL or opts["port"] == opts["metrics-port"]:
        raise UsageError(f"{what}: pool must be at least 1 (at most {MAX_POOL}) and the ports must differ", show_usage=False)
    return opts


def format_options(opts: dict[str, int]) -> str:
    return ",".join(f"{k}={opts[k]}" for k in OPTIONS if opts.get(k) is not None)


def serve_argv(text: str, binary: str, mem_mib: int, cmdline: str, boot: list[str]) -> list[str]:
    """The container's command: ukvm serve on the pod's address, clones on a link-local net;
    `boot` starts the interpreter with ukvm importable."""
    opts = parse(text)
    boot = [arg for arg in boot if arg != "-S"]     # serve's metrics need site-packages (prometheus_client)
    guest = f"{GUEST_NET}.2"
    from ukvm.oci.unikernel import address_args
    from ukvm.options import MEM
    args = f"{address_args(f'{guest}/24', f'{GUEST_NET}.1')} {cmdline}".split()
    return [*boot, "serve", MEM.render(mem_mib), f"--listen=0.0.0.0:{opts['port']}",
            f"--guest={guest}:{opts['guest-port']}", f"--host-ip={GUEST_NET}.1/24",
            f"--metrics=0.0.0.0:{opts['metrics-port']}", f"--pool={opts['pool']}", "--", binary, *args]
