"""Demand for a model: make its first instance, or say why not.

A demand event means requests for the model are waiting and the gateway saw
no ready instance. When the model is registered, has no instance starting or
ready, and no plan in flight, the core plans one instance on the best
placement (``placement.choose_placement``): it writes the plan, announces it
with ``scale.decided`` (the demand's trace id, so the story is one trace) and
sends ``CreateInstance`` to the node's agent.
"""

from __future__ import annotations

from collections import defaultdict

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CreateInstance,
    Demand,
    ModelSpec,
    Plan,
    PlanStep,
    ScaleDecided,
    ScaleFailed,
)

from migserve_scaler.core.effects import IdSource, Outcome, PublishEvent, PutPlan, SendCommand
from migserve_scaler.core.placement import (
    BadProfileBoundError,
    NoCapacity,
    Placement,
    Reservation,
    choose_placement,
)
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import ClusterView, Memory

#: instance states whose slice still exists
_HOLDS_SLICE = frozenset({"starting", "ready", "draining"})


def reserved_slices(view: ClusterView) -> dict[tuple[str, int], list[Reservation]]:
    """Slices used by instances or reserved by plans in flight, by (node, GPU index)."""
    out: dict[tuple[str, int], list[Reservation]] = defaultdict(list)
    for rec in view.instances.values():
        if rec.state in _HOLDS_SLICE:
            out[rec.node, rec.gpu_index].append(
                Reservation(rec.node, rec.gpu_index, rec.profile, rec.start)
            )
    for entry in view.plans.values():
        if view.plan_in_flight(entry.plan.model_id) is None:
            continue
        for step in entry.plan.steps:
            if step.op == "create" and step.status != "failed":
                out[step.node, step.gpu_index].append(
                    Reservation(step.node, step.gpu_index, step.profile, step.start)
                )
    return dict(out)


def report_failure(
    memory: Memory,
    *,
    model_id: str,
    code: ErrorCode,
    reason: str,
    trace_id: str,
    now: float,
    policy: Policy,
    plan_id: str = "",
) -> Outcome:
    """A ScaleFailed event, at most once per ``failure_report_interval_s`` per model and code."""
    last = memory.reported.get((model_id, code.value))
    if last is not None and now - last < policy.failure_report_interval_s:
        return Outcome(memory, notes=(f"{code.value} for {model_id} already reported",))
    event = ScaleFailed(
        model_id=model_id, plan_id=plan_id, code=code, reason=reason, trace_id=trace_id
    )
    return Outcome(
        memory.with_report(model_id, code.value, now),
        effects=(PublishEvent(event),),
        notes=(f"scale failed for {model_id}: {code.value}: {reason}",),
    )


def _recently_done(view: ClusterView, model_id: str, now: float, policy: Policy) -> bool:
    """A plan finished moments ago whose instance may not be in the view yet."""
    entry = view.plans.get(model_id)
    if entry is None or entry.plan.status != "done" or now - entry.plan.updated > policy.settle_s:
        return False
    created = {s.instance_id for s in entry.plan.steps if s.op == "create"}
    return not any(i in view.instances for i in created)


def on_demand(
    view: ClusterView,
    memory: Memory,
    event: Demand,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    model_id = event.model_id
    if now - event.time > policy.demand_max_age_s:
        return Outcome(memory, notes=(f"stale demand for {model_id} ignored",))
    spec = view.models.get(model_id)
    if spec is None:
        return report_failure(
            memory,
            model_id=model_id,
            code=ErrorCode.UNKNOWN_MODEL,
            reason=f"model {model_id!r} is not registered",
            trace_id=event.trace_id,
            now=now,
            policy=policy,
        )
    if view.live_instances(model_id) or _recently_done(view, model_id, now, policy):
        return Outcome(memory, notes=(f"{model_id} already has an instance",))
    if (entry := view.plan_in_flight(model_id)) is not None:
        return Outcome(memory, notes=(f"plan {entry.plan.plan_id} for {model_id} in flight",))
    previous = view.plans.get(model_id)
    if (
        previous is not None
        and previous.plan.status in ("failed", "rolled_back")
        and now - previous.plan.updated < policy.retry_backoff_s
    ):
        return Outcome(memory, notes=(f"{model_id} failed recently; backing off",))
    try:
        choice = choose_placement(spec, view.nodes.values(), reserved_slices(view))
    except BadProfileBoundError as exc:
        return report_failure(
            memory,
            model_id=model_id,
            code=ErrorCode.BAD_REQUEST,
            reason=str(exc),
            trace_id=event.trace_id,
            now=now,
            policy=policy,
        )
    if isinstance(choice, NoCapacity):
        return report_failure(
            memory,
            model_id=model_id,
            code=ErrorCode.NO_CAPACITY,
            reason=choice.reason,
            trace_id=event.trace_id,
            now=now,
            policy=policy,
        )
    return _create_plan(
        spec,
        choice,
        memory,
        expected_revision=previous.revision if previous else None,
        trace_id=event.trace_id,
        now=now,
        ids=ids,
    )


def _create_plan(
    spec: ModelSpec,
    where: Placement,
    memory: Memory,
    *,
    expected_revision: int | None,
    trace_id: str,
    now: float,
    ids: IdSource,
) -> Outcome:
    plan_id, command_id, instance_id = ids("plan-"), ids("cmd-"), ids("inst-")
    reason = (
        f"demand: no instance of {spec.model_id}; {where.profile} ({where.profile_memory_mb} MB) "
        f"is the smallest profile that holds {spec.memory_mb} MB"
    )
    step = PlanStep(
        op="create",
        command_id=command_id,
        instance_id=instance_id,
        node=where.node,
        gpu_index=where.gpu_index,
        profile=where.profile,
        start=where.start,
        status="sent",
    )
    plan = Plan(
        plan_id=plan_id,
        model_id=spec.model_id,
        action="create",
        reason=reason,
        status="running",
        steps=[step],
        trace_id=trace_id,
        created=now,
        updated=now,
    )
    decided = ScaleDecided(
        model_id=spec.model_id,
        plan_id=plan_id,
        action="create",
        reason=reason,
        node=where.node,
        gpu_index=where.gpu_index,
        profile=where.profile,
        start=where.start,
        instance_id=instance_id,
        trace_id=trace_id,
    )
    command = create_command(spec, plan, step, now)
    return Outcome(
        memory.with_sent(command_id, now),
        effects=(
            PutPlan(plan, expected_revision),
            PublishEvent(decided),
            SendCommand(where.node, command),
        ),
        notes=(
            f"plan {plan_id}: create {where.profile} at {where.start} on "
            f"{where.node}/gpu{where.gpu_index} for {spec.model_id}",
        ),
    )


def create_command(spec: ModelSpec, plan: Plan, step: PlanStep, now: float) -> CreateInstance:
    """The agent command that carries out a create step."""
    return CreateInstance(
        command_id=step.command_id,
        trace_id=plan.trace_id,
        plan_id=plan.plan_id,
        issued_at=now,
        instance_id=step.instance_id,
        model=spec,
        gpu_index=step.gpu_index,
        profile=step.profile,
        start=step.start,
    )
