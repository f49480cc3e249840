"""The gateway's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
)  # fmt: skip


class GatewayMetrics:
    """Every series the gateway exports; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "migserve_gateway_requests",
            "HTTP requests answered, by route template, registered model and status",
            ["route", "model", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "migserve_gateway_ttft_seconds",
            "Time from a chat request's arrival to its first token (cold starts included)",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "migserve_gateway_inter_token_seconds",
            "Time between two consecutive tokens of a streamed job, as the gateway sees it",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "migserve_gateway_in_flight", "Chat requests submitted and not yet answered", registry=r
        )
        self.bad_requests = Counter(
            "migserve_gateway_bad_requests",
            "Requests refused because of bad input, by reason",
            ["reason"],
            registry=r,
        )
        self.bad_messages = Counter(
            "migserve_gateway_bad_messages",
            "Undecodable messages from NATS (KV entries), by source",
            ["source"],
            registry=r,
        )
        self.demand_events = Counter(
            "migserve_gateway_demand_events",
            "Demand events published for models without a ready instance",
            registry=r,
        )
        self.job_retries = Counter(
            "migserve_gateway_job_retries",
            "Jobs re-published after a retryable error before their first token",
            registry=r,
        )
        self.refused = Counter(
            "migserve_gateway_refused",
            "Requests refused before dispatch by a limit (in flight, per-key concurrency or "
            "rate, cold-start queue), by reason",
            ["reason"],
            registry=r,
        )
        self.cold_held = Gauge(
            "migserve_gateway_cold_held",
            "Requests held for a model without a ready instance",
            registry=r,
        )
        self.instance_lost = Counter(
            "migserve_gateway_instance_lost",
            "Streams ended because their instance failed or vanished after the first token",
            registry=r,
        )
        self.replies_lost = Counter(
            "migserve_gateway_replies_lost",
            "Answers ended with an error because token replies were lost in transit",
            registry=r,
        )
        self.cancels = Counter(
            "migserve_gateway_job_cancels",
            "Cancels published for jobs (client gone, timeout, stalled stream)",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)
