"""The agent's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    """Counters and gauges of one agent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.commands = Counter(
            "migserve_agent_commands",
            "Commands executed, by type and outcome (done, failed, duplicate)",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.bad_commands = Counter(
            "migserve_agent_bad_commands",
            "Command messages that did not decode (terminated, never retried)",
            registry=self.registry,
        )
        self.bad_records = Counter(
            "migserve_agent_bad_records",
            "KV instance records of this node that did not decode",
            registry=self.registry,
        )
        self.slice_ops = Counter(
            "migserve_agent_slice_operations",
            "Slice creations and destructions, by outcome (ok or an error code)",
            ["op", "outcome"],
            registry=self.registry,
        )
        self.instance_failures = Counter(
            "migserve_agent_instance_failures",
            "Instances that failed to start or died while running",
            registry=self.registry,
        )
        self.reconcile_corrections = Counter(
            "migserve_agent_reconcile_corrections",
            "Corrections made when reconciling at start-up, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.instances = Gauge(
            "migserve_agent_instances",
            "Instances this agent runs",
            registry=self.registry,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (0 when absent), for tests and status."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
