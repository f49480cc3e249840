"""Small hand-built clusters and events for the scaler core's tests (no tests here)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

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
from migserve_shared import mig
from migserve_shared.messages import (
    Event,
    GpuState,
    InstanceRecord,
    MetricsSnapshot,
    ModelSpec,
    NodeState,
    Plan,
    SliceState,
    SloEvidence,
    SloUnderload,
    SloViolation,
)

NOW = 1_000_000.0
MODEL = "org/m"
OTHER = "org/other"
FIXED = "org/fixed"  # not registered: its instances never move
A100 = "A100-SXM4-40GB"
TRACE = "t" * 32

POLICY = Policy(
    cooldown_s=60,
    step_timeout_s=100,
    max_step_attempts=2,
    default_swap_cost_s=5,
    failure_report_interval_s=60,
    plan_timeout_s=1000,
)


def spec(model_id: str = MODEL, **fields: object) -> ModelSpec:
    values: dict[str, object] = {"memory_mb": 1000, "tpot_slo_ms": 50, **fields}
    return ModelSpec(model_id=model_id, **values)  # type: ignore[arg-type]


def inst(
    instance_id: str,
    *,
    node: str = "n1",
    gpu: int = 0,
    profile: str = "1g.5gb",
    start: int = 0,
    state: str = "ready",
    model: str = MODEL,
    created: float = 0.0,
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        model_id=model,
        node=node,
        gpu_index=gpu,
        profile=profile,
        start=start,
        state=state,  # type: ignore[arg-type]
        created=created,
    )


def cluster(
    instances: Iterable[InstanceRecord] = (),
    *,
    gpus: dict[str, int] | None = None,
    models: Iterable[ModelSpec] | None = None,
    plans: Iterable[tuple[Plan, int]] = (),
    gpu_model: str = A100,
) -> ClusterView:
    """Nodes with ``gpus[name]`` GPUs each (default one node n1 with one GPU) whose slices
    are those of the instances that hold one."""
    records = list(instances)
    model = mig.gpu_model(gpu_model)
    nodes = []
    for name, count in (gpus or {"n1": 1}).items():
        states = []
        for index in range(count):
            slices = [
                SliceState(
                    gi_id=k + 1,
                    profile_id=model.profile(r.profile).id,
                    profile=r.profile,
                    start=r.start,
                    instance_id=r.instance_id,
                )
                for k, r in enumerate(records)
                if r.node == name and r.gpu_index == index and r.state != "stopped"
            ]
            states.append(
                GpuState(index=index, uuid=f"GPU-{name}-{index}", model=gpu_model, slices=slices)
            )
        nodes.append(NodeState(node=name, gpus=states))
    registered = list(models) if models is not None else [spec()]
    return ClusterView(
        models={m.model_id: m for m in registered},
        nodes={n.node: n for n in nodes},
        instances={r.instance_id: r for r in records},
        plans={p.model_id: PlanEntry(p, rev) for p, rev in plans},
    )


def counter_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}{next(counter)}"


def decide(
    view: ClusterView,
    event: Event,
    *,
    now: float = NOW,
    memory: Memory | None = None,
    policy: Policy = POLICY,
) -> Outcome:
    return on_event(view, memory or Memory(), event, now, policy=policy, ids=counter_ids())


def tick(
    view: ClusterView, now: float, memory: Memory | None = None, policy: Policy = POLICY
) -> Outcome:
    return on_tick(view, memory or Memory(), now, policy=policy)


def evidence(**fields: object) -> SloEvidence:
    values: dict[str, object] = {
        "tpot_ms": 80.0,
        "slo_ms": 50.0,
        "window_s": 30.0,
        "windows": 3,
        "in_flight": 8,
        "request_rate": 2.0,
        "tokens": 500,
        "instances": ["i1"],
        **fields,
    }
    return SloEvidence(**values)  # type: ignore[arg-type]


def violation(model: str = MODEL, **fields: object) -> SloViolation:
    return SloViolation(model_id=model, evidence=evidence(**fields), trace_id=TRACE, time=NOW)


def underload(model: str = MODEL, **fields: object) -> SloUnderload:
    values: dict[str, object] = {"tpot_ms": 10.0, "windows": 12, "in_flight": 1, **fields}
    return SloUnderload(model_id=model, evidence=evidence(**values), trace_id=TRACE, time=NOW)


def idle_snapshot(model: str = MODEL, *, at: float = NOW, **fields: object) -> MetricsSnapshot:
    values: dict[str, object] = {
        "tpot_ms": None,
        "window_s": 10.0,
        "windows": 0,
        "in_flight": 0,
        "waiting": 0,
        "request_rate": 0.0,
        "tokens": 0,
        **fields,
    }
    return MetricsSnapshot(model_id=model, evidence=evidence(**values), time=at)


def of_type(outcome: Outcome, kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in outcome.effects if isinstance(e, kind)]


def events(outcome: Outcome) -> list[Event]:
    return [e.event for e in of_type(outcome, PublishEvent)]


def the_plan(outcome: Outcome) -> Plan:
    [put] = of_type(outcome, PutPlan)
    return put.plan  # type: ignore[no-any-return]


def commands(outcome: Outcome) -> list[object]:
    return [e.command for e in of_type(outcome, SendCommand)]


def with_plan(view: ClusterView, plan: Plan, revision: int = 7) -> ClusterView:
    return ClusterView(
        models=view.models,
        nodes=view.nodes,
        instances=view.instances,
        plans={**view.plans, plan.model_id: PlanEntry(plan, revision)},
    )
