"""The scaler's own Prometheus metrics, in a registry owned by the service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.events = Counter(
            "migserve_scaler_events", "Events consumed, by kind", ["kind"], registry=reg
        )
        self.bad_messages = Counter(
            "migserve_scaler_bad_messages",
            "Events or KV values that did not decode, by source",
            ["source"],
            registry=reg,
        )
        self.plans = Counter(
            "migserve_scaler_plans",
            "Plans written, by action and status",
            ["action", "status"],
            registry=reg,
        )
        self.scale_failed = Counter(
            "migserve_scaler_scale_failed",
            "scale.failed events published, by code",
            ["code"],
            registry=reg,
        )
        self.commands = Counter(
            "migserve_scaler_commands", "Commands sent to agents, by type", ["type"], registry=reg
        )
        self.conflicts = Counter(
            "migserve_scaler_plan_conflicts",
            "Plan writes refused by compare-and-set (someone else changed the plan)",
            registry=reg,
        )
        self.errors = Counter(
            "migserve_scaler_errors",
            "Events whose handling failed and will be retried",
            registry=reg,
        )
        self.leader = Gauge(
            "migserve_scaler_leader",
            "1 while this replica holds the scaler lease and acts, 0 while it follows",
            registry=reg,
        )
        self.leader_term = Gauge(
            "migserve_scaler_leader_term",
            "Term of the lease this replica last held (counts leaderships)",
            registry=reg,
        )
        self.leader_changes = Counter(
            "migserve_scaler_leader_changes",
            "Times this replica took the lease (acquired) or stopped leading "
            "(released, lost to another replica, expired without renewal)",
            ["change"],
            registry=reg,
        )
