"""serve/metrics.py: Prometheus metrics on a private registry (prometheus-client, imported only
when --metrics is given). The per-hypercall exit counts are read from the clones when scraped."""
from __future__ import annotations

from ukvm.hvt_abi import HYPERCALL_NAMES


class Metrics:
    def __init__(self, exit_counts, address: tuple[str, int]):
        """exit_counts(): {hypercall number: exits} of every clone this server ever had."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
        from prometheus_client.core import CounterMetricFamily
        self.registry = CollectorRegistry()
        self.requests = Counter("ukvm_requests", "Connections served, by outcome", ["outcome"],
                                registry=self.registry)
        self.latency = Histogram("ukvm_request_seconds", "Accept to close of a connection",
                                 buckets=(.0005, .001, .002, .003, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.resets = Counter("ukvm_resets", "Clone resets", registry=self.registry)
        self.reset_latency = Histogram("ukvm_reset_seconds", "Time of one clone reset",
                                       buckets=(25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3),
                                       registry=self.registry)
        self.in_use = Gauge("ukvm_clones_in_use", "Clones serving a connection", registry=self.registry)
        self.clones = Gauge("ukvm_clones", "Clones in the pool", registry=self.registry)
        self.failures = Counter("ukvm_clone_failures", "Runs that did not end with the connection",
                                ["cause"], registry=self.registry)
        self.errors = Counter("ukvm_connection_errors", "Connections ended by an error in serve's handling of "
                              "them, by exception", ["cause"], registry=self.registry)
        self.dropped = Counter("ukvm_switch_dropped_frames", "Frames the switch refused",
                               ["source", "reason"], registry=self.registry)

        class Exits:
            def collect(_self):
                family = CounterMetricFamily("ukvm_exits", "Hypercall exits of all clones", labels=["hypercall"])
                counts = exit_counts()
                for nr, name in HYPERCALL_NAMES.items():
                    family.add_metric([name], counts.get(nr, 0))
                yield family
        self.registry.register(Exits())
        self.http, self.http_thread = start_http_server(address[1], address[0], registry=self.registry)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
