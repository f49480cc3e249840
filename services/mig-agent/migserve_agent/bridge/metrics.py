"""The bridge's Prometheus series: engine-agnostic token latency of one instance.

Every series carries the same fixed labels (model, instance, node, engine,
profile: the instance's MIG profile name, "" when not given),
plus ``outcome`` on the jobs counter, so cardinality is fixed per instance.
The labelled children are bound once here; the token path only calls
``observe``/``inc`` on them. Each bridge owns its ``CollectorRegistry`` (no
global registry, so several bridges can live in one test process).

TPOT per instance for the watcher, over a window W::

    rate(migserve_bridge_inter_token_seconds_sum[W])
      / rate(migserve_bridge_inter_token_seconds_count[W])
"""

from __future__ import annotations

from typing import Final, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

Outcome = Literal["done", "error", "cancelled", "expired", "retried", "bad"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("done", "error", "cancelled", "expired", "retried", "bad")

CONTENT_TYPE: Final = exposition.CONTENT_TYPE_LATEST

#: fine around 1-200 ms per token, coarse beyond
INTER_TOKEN_BUCKETS: Final = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.008,
    0.010,
    0.012,
    0.014,
    0.016,
    0.018,
    0.020,
    0.022,
    0.024,
    0.026,
    0.028,
    0.030,
    0.035,
    0.040,
    0.045,
    0.050,
    0.060,
    0.070,
    0.080,
    0.090,
    0.100,
    0.125,
    0.150,
    0.175,
    0.200,
    0.250,
    0.300,
    0.400,
    0.500,
    0.750,
    1.0,
    2.0,
    5.0,
)
TTFT_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
)

LABELS: Final = ("model", "instance", "node", "engine", "profile")


class BridgeMetrics:
    """The series of one bridge, bound to its instance's labels."""

    def __init__(
        self, *, model: str, instance: str, node: str, engine: str, slots: int, profile: str = ""
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {
            "model": model,
            "instance": instance,
            "node": node,
            "engine": engine,
            "profile": profile,
        }
        self._labels = labels
        reg = self.registry
        self.inter_token = Histogram(
            "migserve_bridge_inter_token_seconds",
            "Time between consecutive tokens of one stream, observed as they arrive.",
            LABELS,
            registry=reg,
            buckets=INTER_TOKEN_BUCKETS,
        ).labels(**labels)
        self.ttft = Histogram(
            "migserve_bridge_ttft_seconds",
            "Time from sending a job to the engine to its first token.",
            LABELS,
            registry=reg,
            buckets=TTFT_BUCKETS,
        ).labels(**labels)
        self.tokens = Counter(
            "migserve_bridge_tokens",
            "Tokens streamed back to clients.",
            LABELS,
            registry=reg,
        ).labels(**labels)
        jobs = Counter(
            "migserve_bridge_jobs",
            "Jobs taken from the queue, by how they ended.",
            (*LABELS, "outcome"),
            registry=reg,
        )
        self._jobs = {outcome: jobs.labels(**labels, outcome=outcome) for outcome in OUTCOMES}
        self.in_flight = Gauge(
            "migserve_bridge_in_flight",
            "Jobs this bridge is streaming now.",
            LABELS,
            registry=reg,
        ).labels(**labels)
        slots_gauge = Gauge(
            "migserve_bridge_slots",
            "Concurrent jobs this bridge takes (the engine's slots).",
            LABELS,
            registry=reg,
        ).labels(**labels)
        slots_gauge.set(slots)
        self.engine_ready = Gauge(
            "migserve_bridge_engine_ready",
            "1 while the engine answers its health check and the bridge takes jobs.",
            LABELS,
            registry=reg,
        ).labels(**labels)

    def job(self, outcome: Outcome) -> None:
        """Count one job that ended with ``outcome``."""
        self._jobs[outcome].inc()

    def jobs(self, outcome: Outcome) -> float:
        """How many jobs ended with ``outcome`` so far (for /health and tests)."""
        value = self.registry.get_sample_value(
            "migserve_bridge_jobs_total", {**self._labels, "outcome": outcome}
        )
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
