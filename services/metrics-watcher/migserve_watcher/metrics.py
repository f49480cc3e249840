"""The watcher's own Prometheus metrics, in a registry owned by the service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class WatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.scrapes = Counter(
            "migserve_watcher_scrapes",
            "Scrapes of engine and bridge /metrics, by target and result",
            ["target", "result"],
            registry=reg,
        )
        self.bad_values = Counter(
            "migserve_watcher_bad_values",
            "KV values that did not decode, by bucket",
            ["bucket"],
            registry=reg,
        )
        self.snapshots = Counter(
            "migserve_watcher_snapshots", "metrics.snapshot events published", registry=reg
        )
        self.slo_events = Counter(
            "migserve_watcher_slo_events",
            "slo.violation, slo.recovered and slo.underload events published, by kind",
            ["kind"],
            registry=reg,
        )
        self.errors = Counter(
            "migserve_watcher_errors", "Polls that failed (retried next interval)", registry=reg
        )
