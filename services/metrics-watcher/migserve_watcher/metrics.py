"""The watcher's own Prometheus metrics, in a registry owned by the service.

``migserve_model_tpot_slo_seconds{model}`` is each registered model's TPOT SLO
(``ModelSpec.tpot_slo_ms`` in seconds), refreshed from the models bucket every
poll: a removed model's series disappears at the next poll. The Grafana
dashboard draws it as the SLO line beside each model's TPOT.
"""

from __future__ import annotations

from collections.abc import Mapping

from migserve_shared.messages import ModelSpec
from prometheus_client import CollectorRegistry, Counter, Gauge

MODEL_TPOT_SLO = "migserve_model_tpot_slo_seconds"


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
        self.tpot_slo = Gauge(
            MODEL_TPOT_SLO,
            "TPOT SLO of each registered model, in seconds (from the models bucket)",
            ["model"],
            registry=reg,
        )
        self._slo_models: set[str] = set()

    def show_models(self, specs: Mapping[str, ModelSpec]) -> None:
        """Export the TPOT SLO of exactly the models in ``specs`` (others are removed)."""
        for model_id in self._slo_models - specs.keys():
            self.tpot_slo.remove(model_id)
        for model_id, spec in specs.items():
            self.tpot_slo.labels(model_id).set(spec.tpot_slo_ms / 1000.0)
        self._slo_models = set(specs)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Current value of a sample (None when absent), for tests."""
        return self.registry.get_sample_value(name, labels or {})
