"""Ours: the real scaler decision core and the real watcher SLO state machine.

Nothing here decides. The controller is the scaler's and the watcher's
adapters in simulated time:

- every watcher window: a ``metrics.snapshot`` per model, then the watcher's
  ``slo.step`` (``migserve_watcher.core.slo``) turns the evidence into
  ``slo.violation`` / ``slo.recovered`` / ``slo.underload`` events;
- those, the gateway's ``demand`` events, the agents' lifecycle and result
  events and the scaler's own published events go to ``on_event`` when the
  production scaler's events consumer takes their kind
  (``adapters.events.consumed_kinds``: not ``metrics.snapshot``, ``slice.*``
  or ``scale.*``); ``on_tick`` runs every ``tick_s``;
- effects run in order like ``adapters/effects.py``: ``PutPlan`` is a
  compare-and-set on the simulated plans bucket (revisions counted per key;
  a lost race skips the rest and decides again, at most 3 times, keeping the
  memory only when every effect ran), ``SendCommand`` goes to the simulated
  agent, ``PublishEvent`` comes back as an event.

The view is built like the scaler's ``ViewStore``: the models, nodes,
instances and plans maps, updated in place as the buckets change.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import msgspec
from migserve_scaler.adapters.events import consumed_kinds
from migserve_scaler.core import (
    ClusterView,
    Memory,
    Outcome,
    PlanEntry,
    Policy,
    PublishEvent,
    PutPlan,
    SendCommand,
    on_event,
    on_tick,
)
from migserve_shared.messages import (
    Demand,
    Event,
    MetricsSnapshot,
    ModelRegistered,
    ModelSpec,
    ScaleDecided,
    ScaleFailed,
    SloEvidence,
    SloRecovered,
    SloUnderload,
    SloViolation,
    event_kind,
)
from migserve_watcher.core.slo import SloDecision, SloPolicy, SloState, step

from migserve_cli.sim.simulator import Simulator

_MAX_CONFLICT_RETRIES = 3

_Decide = Callable[[Memory], Outcome]


@dataclass(slots=True)
class ScalerLog:
    """What the core did, for the report."""

    decisions: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    slo_events: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    core_calls: int = 0
    #: (simulated time, model, action, profile) of every scale.decided
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)


class ScalerController:
    """Drives ``migserve_scaler.core`` and ``migserve_watcher.core.slo``."""

    name = "ours"

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        slo_policy: SloPolicy | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.slo_policy = slo_policy or SloPolicy()
        self.consumed = frozenset(consumed_kinds())
        self.models: dict[str, ModelSpec] = {}
        self.plans: dict[str, PlanEntry] = {}
        self.memory = Memory()
        self.slo: dict[str, SloState] = {}
        self.log = ScalerLog()
        self._revision = itertools.count(1)
        self._traces = itertools.count(1)

    # Wiring ---------------------------------------------------------------------
    def view(self, sim: Simulator) -> ClusterView:
        return ClusterView(
            models=self.models, nodes=sim.nodes, instances=sim.records, plans=self.plans
        )

    def start(self, sim: Simulator) -> None:
        for model in sim.models.values():
            spec = model.spec
            self.models[spec.model_id] = spec
            self._feed(sim, self._stamp(sim, ModelRegistered(model=spec)))

    def _stamp(self, sim: Simulator, event: Event) -> Event:
        return msgspec.structs.replace(
            event, event_id=sim.new_id("evt-"), time=sim.abs_now, source="sim"
        )

    # Inputs ---------------------------------------------------------------------
    def on_tick(self, sim: Simulator) -> None:
        self._decide(
            sim, lambda memory: on_tick(self.view(sim), memory, sim.abs_now, policy=self.policy)
        )

    def on_demand(self, sim: Simulator, model_id: str, waiting: int) -> None:
        event = Demand(
            model_id=model_id,
            waiting=waiting,
            trace_id=f"trace-demand-{next(self._traces)}",
            event_id=sim.new_id("evt-"),
            time=sim.abs_now,
            source="sim-gateway",
        )
        self._feed(sim, event)

    def on_agent_event(self, sim: Simulator, event: Event) -> None:
        self._feed(sim, event)

    def on_window(self, sim: Simulator, evidence: Mapping[str, SloEvidence]) -> None:
        for model_id, ev in evidence.items():
            snap = MetricsSnapshot(
                model_id=model_id,
                evidence=ev,
                event_id=sim.new_id("evt-"),
                time=sim.abs_now,
                source="sim-watcher",
            )
            self._feed(sim, snap)
            state, decision = step(
                self.slo.get(model_id, SloState()),
                ev,
                now=sim.abs_now,
                policy=self.slo_policy,
                new_trace=lambda: f"trace-slo-{next(self._traces)}",
            )
            self.slo[model_id] = state
            if decision is not None:
                self._feed(sim, self._slo_event(sim, model_id, decision))

    def _slo_event(self, sim: Simulator, model_id: str, decision: SloDecision) -> Event:
        self.log.slo_events[decision.kind] = self.log.slo_events.get(decision.kind, 0) + 1
        common = {
            "model_id": model_id,
            "evidence": decision.evidence,
            "trace_id": decision.trace_id,
            "event_id": sim.new_id("evt-"),
            "time": sim.abs_now,
            "source": "sim-watcher",
        }
        if decision.kind == "violation":
            return SloViolation(**common)  # type: ignore[arg-type]
        if decision.kind == "recovered":
            return SloRecovered(**common)  # type: ignore[arg-type]
        return SloUnderload(**common)  # type: ignore[arg-type]

    def _feed(self, sim: Simulator, event: Event) -> None:
        if event_kind(event) not in self.consumed:
            return
        ids = _Ids(sim)
        self._decide(
            sim,
            lambda memory: on_event(
                self.view(sim), memory, event, sim.abs_now, policy=self.policy, ids=ids
            ),
        )

    # Effects --------------------------------------------------------------------
    def _decide(self, sim: Simulator, decide: _Decide) -> None:
        for _ in range(_MAX_CONFLICT_RETRIES):
            self.log.core_calls += 1
            outcome = decide(self.memory)
            if self._run(sim, outcome):
                self.memory = outcome.memory
                return
            self.log.conflicts += 1

    def _run(self, sim: Simulator, outcome: Outcome) -> bool:
        for effect in outcome.effects:
            if isinstance(effect, PutPlan):
                if not self._put_plan(effect):
                    return False
            elif isinstance(effect, SendCommand):
                sim.at(sim.now, partial(sim.agent.execute, effect.node, effect.command))
            elif isinstance(effect, PublishEvent):
                self._published(sim, effect.event)
        return True

    def _put_plan(self, effect: PutPlan) -> bool:
        plan = effect.plan
        current = self.plans.get(plan.model_id)
        if effect.expected_revision is None:
            if current is not None:
                return False
        elif current is None or current.revision != effect.expected_revision:
            return False
        self.plans[plan.model_id] = PlanEntry(plan, next(self._revision))
        return True

    def _published(self, sim: Simulator, event: Event) -> None:
        if isinstance(event, ScaleDecided):
            self.log.decisions[event.action] = self.log.decisions.get(event.action, 0) + 1
            self.log.timeline.append((sim.now, event.model_id, event.action, event.profile))
        elif isinstance(event, ScaleFailed):
            code = event.code.value
            self.log.failures[code] = self.log.failures.get(code, 0) + 1
        sim.at(sim.now, partial(self._feed, sim, self._stamp(sim, event)))


class _Ids:
    """Deterministic ids from the simulator's counter (the core's ``IdSource``)."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def __call__(self, prefix: str) -> str:
        return self._sim.new_id(prefix)
