"""What the core decides from: the cluster as the KV buckets show it, and soft memory.

``ClusterView`` mirrors the models, nodes, instances and plans buckets (the
adapters keep it current; the core only reads it). ``Memory`` holds what the
scaler may forget on a restart without harm: when it last reported a failure
(rate limiting) and when it last sent a command (resending).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from migserve_shared.messages import InstanceRecord, ModelSpec, NodeState, Plan

IN_FLIGHT: Final = frozenset({"pending", "running"})
LIVE_INSTANCE: Final = frozenset({"starting", "ready"})


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """A plan as stored in the plans bucket, with the revision that compare-and-set needs."""

    plan: Plan
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """The cluster's state by id: models by model id, nodes by node name,
    instances by instance id, plans by model id."""

    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    nodes: Mapping[str, NodeState] = field(default_factory=dict)
    instances: Mapping[str, InstanceRecord] = field(default_factory=dict)
    plans: Mapping[str, PlanEntry] = field(default_factory=dict)

    def plan_in_flight(self, model_id: str) -> PlanEntry | None:
        entry = self.plans.get(model_id)
        if entry is not None and entry.plan.status in IN_FLIGHT:
            return entry
        return None

    def live_instances(self, model_id: str) -> list[InstanceRecord]:
        """Instances of ``model_id`` that are starting or ready."""
        return [
            rec
            for rec in self.instances.values()
            if rec.model_id == model_id and rec.state in LIVE_INSTANCE
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """Soft state: losing it on a restart costs at most one extra report or resend."""

    #: (model id, error code) -> when a ScaleFailed with that code was last published
    reported: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: command id -> when the command was last published
    sent: Mapping[str, float] = field(default_factory=dict)

    def with_report(self, model_id: str, code: str, at: float) -> Memory:
        return replace(self, reported={**self.reported, (model_id, code): at})

    def with_sent(self, command_id: str, at: float) -> Memory:
        return replace(self, sent={**self.sent, command_id: at})

    def forget_commands(self, command_ids: set[str]) -> Memory:
        if not command_ids & self.sent.keys():
            return self
        return replace(self, sent={k: v for k, v in self.sent.items() if k not in command_ids})
