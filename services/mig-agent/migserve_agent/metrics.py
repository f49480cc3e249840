"""The agent's Prometheus metrics, in a registry of its own (no global state).

``migserve_agent_slice_info{node,gpu,gpu_uuid,profile,start,instance_id,model}``
is 1 for every MIG slice on the node's GPUs (instance_id and model empty for a
slice no instance uses): the Grafana dashboard's slice layout per GPU. It is
built at scrape time from the agent's last published inventory and its
instances, so a destroyed slice's series disappears with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from migserve_shared.messages import InstanceRecord, NodeState
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SLICE_INFO = "migserve_agent_slice_info"
SLICE_INFO_LABELS = ("node", "gpu", "gpu_uuid", "profile", "start", "instance_id", "model")

SliceRow = tuple[str, str, str, str, str, str, str]


def slice_info_rows(state: NodeState | None, records: Iterable[InstanceRecord]) -> list[SliceRow]:
    """One label row (in ``SLICE_INFO_LABELS`` order) per slice of ``state``."""
    if state is None:
        return []
    models = {r.instance_id: r.model_id for r in records}
    return [
        (
            state.node,
            str(gpu.index),
            gpu.uuid,
            s.profile,
            str(s.start),
            s.instance_id or "",
            models.get(s.instance_id or "", ""),
        )
        for gpu in state.gpus
        for s in gpu.slices
    ]


class _SliceInfo(Collector):
    """Collects ``migserve_agent_slice_info`` from a row source read at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], Sequence[SliceRow]] = list

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            SLICE_INFO,
            "1 per MIG slice on this node's GPUs, labelled with its place and its instance",
            labels=SLICE_INFO_LABELS,
        )
        for row in self.source():
            family.add_metric(row, 1.0)
        yield family


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
        self._slice_info = _SliceInfo()
        self.registry.register(self._slice_info)

    def show_slices(self, source: Callable[[], Sequence[SliceRow]]) -> None:
        """Export ``migserve_agent_slice_info`` from ``source`` (rows, read at each scrape)."""
        self._slice_info.source = source

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (0 when absent), for tests and status."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0
