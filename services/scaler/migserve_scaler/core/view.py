"""What the core decides from: the cluster as the KV buckets show it, and soft memory.

``ClusterView`` mirrors the models, nodes, instances and plans buckets (the
adapters keep it current; the core only reads it). ``Memory`` holds what the
scaler may forget on a restart without harm: when it last reported a failure
(rate limiting), when it last sent a command (resending), what swaps cost
(learned, back to the default after a restart), since when models are idle
(a restart only delays a scale to zero), which instances failed lately, the
live instances it last saw and the losses it still has to replace (a restart
forgets losses not yet replaced: demand and ``min_replicas`` still bring a
model back). Everything a plan in flight needs to continue is in the plan
itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from migserve_shared.messages import InstanceRecord, ModelSpec, NodeState, Plan

IN_FLIGHT: Final = frozenset({"pending", "running"})
LIVE_INSTANCE: Final = frozenset({"starting", "ready"})
FINISHED: Final = frozenset({"done", "failed", "rolled_back"})


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
class Lost:
    """A live instance that failed or vanished without a plan retiring it."""

    instance_id: str
    model_id: str
    profile: str
    #: the failure event's trace id (else the lost instance's own)
    trace_id: str
    #: when the scaler noticed the loss
    since: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """Soft state: losing it on a restart costs at most one extra report or resend,
    a default swap cost instead of a learned one, or a later scale to zero."""

    #: (model id, error code) -> when a ScaleFailed with that code was last published
    reported: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: command id -> when the command was last published
    sent: Mapping[str, float] = field(default_factory=dict)
    #: (engine, profile) -> seconds from a create step's first send to its instance ready (EWMA)
    swap_cost: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: model id -> since when its metrics show no load at all
    idle_since: Mapping[str, float] = field(default_factory=dict)
    #: instance id -> when an ``instance.failed`` event about it arrived
    failed: Mapping[str, float] = field(default_factory=dict)
    #: model id -> its live instances (by id) when the scaler last looked
    seen: Mapping[str, Mapping[str, InstanceRecord]] = field(default_factory=dict)
    #: model id -> instances it lost that still await a replacement, oldest first
    lost: Mapping[str, tuple[Lost, ...]] = field(default_factory=dict)
    #: model id -> trace id of its ``model.removed``, while its instances still await retiring
    removing: Mapping[str, str] = field(default_factory=dict)

    def with_report(self, model_id: str, code: str, at: float) -> Memory:
        return replace(self, reported={**self.reported, (model_id, code): at})

    def with_sent(self, command_id: str, at: float) -> Memory:
        return replace(self, sent={**self.sent, command_id: at})

    def forget_commands(self, command_ids: set[str]) -> Memory:
        if not command_ids & self.sent.keys():
            return self
        return replace(self, sent={k: v for k, v in self.sent.items() if k not in command_ids})

    def with_swap_cost(self, engine: str, profile: str, seconds: float, *, alpha: float) -> Memory:
        """Fold one measured swap into the running average of its (engine, profile)."""
        key = (engine, profile)
        old = self.swap_cost.get(key)
        new = seconds if old is None else alpha * seconds + (1 - alpha) * old
        return replace(self, swap_cost={**self.swap_cost, key: new})

    def with_idle(self, model_id: str, since: float | None) -> Memory:
        """Record that ``model_id`` is idle since ``since`` (None: it is not idle)."""
        if since is None:
            if model_id not in self.idle_since:
                return self
            return replace(
                self, idle_since={k: v for k, v in self.idle_since.items() if k != model_id}
            )
        if self.idle_since.get(model_id) == since:
            return self
        return replace(self, idle_since={**self.idle_since, model_id: since})

    def with_failed(self, instance_id: str, at: float) -> Memory:
        if instance_id in self.failed:
            return self
        return replace(self, failed={**self.failed, instance_id: at})

    def forget_failed_before(self, cutoff: float) -> Memory:
        """Forget failures noticed before ``cutoff``."""
        if all(at >= cutoff for at in self.failed.values()):
            return self
        return replace(self, failed={k: v for k, v in self.failed.items() if v >= cutoff})

    def with_seen(self, model_id: str, live: Mapping[str, InstanceRecord] | None) -> Memory:
        """Record the live instances of ``model_id`` (None: forget the model)."""
        old = self.seen.get(model_id)
        if live is None:
            if old is None:
                return self
            return replace(self, seen={k: v for k, v in self.seen.items() if k != model_id})
        if old is not None and old.keys() == live.keys():
            return self
        return replace(self, seen={**self.seen, model_id: dict(live)})

    def with_lost(self, model_id: str, lost: tuple[Lost, ...]) -> Memory:
        """Set the losses of ``model_id`` still to replace (empty: none)."""
        if self.lost.get(model_id, ()) == lost:
            return self
        if not lost:
            return replace(self, lost={k: v for k, v in self.lost.items() if k != model_id})
        return replace(self, lost={**self.lost, model_id: lost})

    def with_removing(self, model_id: str, trace_id: str | None) -> Memory:
        """Record that ``model_id`` was removed (None: its removal is planned or moot)."""
        if trace_id is None:
            if model_id not in self.removing:
                return self
            return replace(self, removing={k: v for k, v in self.removing.items() if k != model_id})
        return replace(self, removing={**self.removing, model_id: trace_id})
