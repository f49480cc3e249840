"""Plans in flight: steps finish or fail, plans time out, lost commands are sent again.

A create step is done when its command is done (``command.done``) or its
instance is ready (``instance.ready``, or the instance record says so); it
fails on ``command.failed`` or ``instance.failed``. A plan is done when all
its steps are, and failed as soon as one step fails (with ``scale.failed``
carrying the reason and the plan's trace id). A plan still in flight after
``plan_timeout_s`` fails with code ``timeout``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    InstanceFailed,
    InstanceReady,
    Plan,
    PlanStep,
    ScaleFailed,
)

from migserve_scaler.core.demand import create_command
from migserve_scaler.core.effects import Outcome, PublishEvent, PutPlan, SendCommand
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import IN_FLIGHT, ClusterView, Memory, PlanEntry

StepResult: TypeAlias = CommandDone | CommandFailed | InstanceReady | InstanceFailed


def _find(
    view: ClusterView, attr: Literal["command_id", "instance_id"], value: str
) -> tuple[PlanEntry, PlanStep] | None:
    """The plan in flight and its step whose ``attr`` is ``value``."""
    for entry in view.plans.values():
        if entry.plan.status not in IN_FLIGHT:
            continue
        for step in entry.plan.steps:
            if getattr(step, attr) == value:
                return entry, step
    return None


def _step_done(entry: PlanEntry, step: PlanStep, memory: Memory, now: float) -> Outcome:
    if step.status == "done":
        return Outcome(memory, notes=(f"step {step.command_id} already done",))
    steps = [
        msgspec.structs.replace(s, status="done") if s.command_id == step.command_id else s
        for s in entry.plan.steps
    ]
    all_done = all(s.status == "done" for s in steps)
    plan = msgspec.structs.replace(
        entry.plan, steps=steps, status="done" if all_done else entry.plan.status, updated=now
    )
    note = f"plan {plan.plan_id} done" if all_done else f"step {step.command_id} done"
    return Outcome(
        memory.forget_commands({step.command_id}),
        effects=(PutPlan(plan, entry.revision),),
        notes=(note,),
    )


def fail_plan(
    entry: PlanEntry,
    memory: Memory,
    *,
    code: ErrorCode,
    reason: str,
    now: float,
    step: PlanStep | None = None,
) -> Outcome:
    """Mark the plan (and ``step``) failed and publish scale.failed with the reason."""
    failed = step.command_id if step is not None else None
    steps = [
        msgspec.structs.replace(s, status="failed", reason=reason) if s.command_id == failed else s
        for s in entry.plan.steps
    ]
    why = f"{entry.plan.reason}; failed: {reason}" if entry.plan.reason else reason
    plan = msgspec.structs.replace(
        entry.plan, steps=steps, status="failed", reason=why, updated=now
    )
    event = ScaleFailed(
        model_id=plan.model_id,
        plan_id=plan.plan_id,
        code=code,
        reason=reason,
        trace_id=plan.trace_id,
    )
    return Outcome(
        memory.forget_commands({s.command_id for s in plan.steps}),
        effects=(PutPlan(plan, entry.revision), PublishEvent(event)),
        notes=(f"plan {plan.plan_id} for {plan.model_id} failed: {code.value}: {reason}",),
    )


def on_step_result(view: ClusterView, memory: Memory, event: StepResult, now: float) -> Outcome:
    """Advance the plan whose step ``event`` reports on (if any plan in flight has one)."""
    if isinstance(event, CommandDone | CommandFailed):
        found = _find(view, "command_id", event.command_id)
    else:
        found = _find(view, "instance_id", event.instance_id)
    if found is None:
        return Outcome(memory)
    entry, step = found
    if isinstance(event, CommandDone | InstanceReady):
        return _step_done(entry, step, memory, now)
    where = f"{step.op} {step.profile} at {step.start} on {step.node}/gpu{step.gpu_index}"
    return fail_plan(
        entry,
        memory,
        code=event.code,
        reason=f"{where}: {event.reason or event.code.value}",
        now=now,
        step=step,
    )


def _tick_plan(
    view: ClusterView, entry: PlanEntry, memory: Memory, now: float, policy: Policy
) -> Outcome:
    plan = entry.plan
    if now - plan.created > policy.plan_timeout_s:
        pending = [s for s in plan.steps if s.status != "done"]
        detail = ", ".join(f"{s.op} {s.instance_id} on {s.node}" for s in pending)
        return fail_plan(
            entry,
            memory,
            code=ErrorCode.TIMEOUT,
            reason=f"plan still in flight after {policy.plan_timeout_s:g} s ({detail})",
            now=now,
        )
    for step in plan.steps:
        if step.status != "sent":
            continue
        record = view.instances.get(step.instance_id)
        if record is not None and record.state == "ready":
            return _step_done(entry, step, memory, now)
        if record is not None and record.state == "failed":
            reason = record.reason or "instance failed"
            return fail_plan(
                entry, memory, code=ErrorCode.ENGINE_FAILED, reason=reason, now=now, step=step
            )
    return _resend(view, plan, memory, now, policy)


def _resend(view: ClusterView, plan: Plan, memory: Memory, now: float, policy: Policy) -> Outcome:
    """Publish again commands whose result has not come (the stream drops duplicates)."""
    spec = view.models.get(plan.model_id)
    out = Outcome(memory)
    for step in plan.steps:
        if step.status != "sent" or step.op != "create" or spec is None:
            continue
        last = out.memory.sent.get(step.command_id, plan.updated)
        if now - last < policy.resend_after_s:
            continue
        command = create_command(spec, plan, step, now)
        out = out.then(
            Outcome(
                out.memory.with_sent(step.command_id, now),
                effects=(SendCommand(step.node, command),),
                notes=(f"command {step.command_id} sent again",),
            )
        )
    return out


def on_tick(view: ClusterView, memory: Memory, now: float, *, policy: Policy) -> Outcome:
    """Time-driven transitions of every plan in flight."""
    out = Outcome(memory)
    for model_id in sorted(view.plans):
        entry = view.plan_in_flight(model_id)
        if entry is not None:
            out = out.then(_tick_plan(view, entry, out.memory, now, policy))
    return out
