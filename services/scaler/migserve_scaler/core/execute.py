"""Running a plan step by step: send, wait, retry, roll back, finish.

A plan's steps run in order, one at a time: a step is sent only when every
step before it in its phase is done. The forward phase is the plan's own
steps; when one fails for good, undo steps are appended (``rollback``) and
run the same way. A plan ends ``done`` (forward steps all done),
``rolled_back`` (undo steps all done) or ``failed`` (nothing to undo, or the
undo failed). Every change is one compare-and-set write of the plan, then the
commands and events it implies, so the plan in KV is always enough to go on
(a restarted scaler resends the step in flight and continues).

Failures: a step whose command fails with a code that may pass (engine
failure, timeout, internal, in use) is tried again with fresh ids, up to
``max_step_attempts`` sends; a step without a result after
``step_timeout_s`` is sent again (same ids: the agent answers a duplicate
from its ledger) and fails after the last attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import Plan, PlanAction, PlanStep, ScaleDecided, ScaleFailed

from migserve_scaler.core.cluster import step_model
from migserve_scaler.core.commands import retry_id, step_command
from migserve_scaler.core.effects import (
    Effect,
    IdSource,
    Outcome,
    PublishEvent,
    PutPlan,
    SendCommand,
)
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.rollback import describe_undo, mark_failed, undo_steps
from migserve_scaler.core.view import ClusterView, Memory, PlanEntry

#: codes of failures that a second attempt may not see
RETRYABLE = frozenset(
    {
        ErrorCode.ENGINE_FAILED,
        ErrorCode.ENGINE_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.INTERNAL,
        ErrorCode.IN_USE,
    }
)


@dataclass(frozen=True, slots=True)
class Draft:
    """A plan before it has an id: what to do, in which steps (all pending), and why."""

    action: PlanAction
    reason: str
    steps: tuple[PlanStep, ...]
    break_before_make: bool = False
    #: the step ``scale.decided`` describes (the new instance, or the one retired)
    headline: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """A plan being changed: the plan, memory, and what to do after writing it."""

    plan: Plan
    memory: Memory
    effects: tuple[Effect, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def add(self, *effects: Effect, note: str = "") -> Progress:
        notes = (*self.notes, note) if note else self.notes
        return Progress(self.plan, self.memory, self.effects + effects, notes)

    def outcome(self, revision: int | None) -> Outcome:
        return Outcome(self.memory, (PutPlan(self.plan, revision), *self.effects), self.notes)


def _with_step(plan: Plan, index: int, **changes: object) -> Plan:
    steps = list(plan.steps)
    steps[index] = msgspec.structs.replace(steps[index], **changes)
    return msgspec.structs.replace(plan, steps=steps)


def undoing(plan: Plan) -> bool:
    return any(s.rollback for s in plan.steps)


def phase(plan: Plan) -> list[int]:
    """Indices of the steps of the plan's current phase."""
    rollback = undoing(plan)
    return [i for i, s in enumerate(plan.steps) if s.rollback == rollback]


def step_in_flight(plan: Plan) -> int | None:
    return next((i for i in phase(plan) if plan.steps[i].status == "sent"), None)


def start_plan(
    view: ClusterView,
    memory: Memory,
    draft: Draft,
    *,
    model_id: str,
    trace_id: str,
    now: float,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    """Write the plan, announce it with ``scale.decided`` and send its first step."""
    previous = view.plans.get(model_id)
    plan = Plan(
        plan_id=ids("plan-"),
        model_id=model_id,
        action=draft.action,
        reason=draft.reason,
        status="running",
        steps=list(draft.steps),
        trace_id=trace_id,
        created=now,
        updated=now,
        break_before_make=draft.break_before_make,
    )
    head = draft.steps[draft.headline]
    decided = ScaleDecided(
        model_id=model_id,
        plan_id=plan.plan_id,
        action=draft.action,
        reason=draft.reason,
        node=head.node,
        gpu_index=head.gpu_index,
        profile=head.profile,
        start=head.start,
        instance_id=head.instance_id,
        break_before_make=draft.break_before_make,
        trace_id=trace_id,
    )
    summary = "; ".join(
        f"{s.op} {s.profile} at {s.start} on {s.node}/gpu{s.gpu_index} ({s.instance_id})"
        for s in draft.steps
    )
    progress = Progress(plan, memory).add(
        PublishEvent(decided),
        note=f"plan {plan.plan_id} ({draft.action}) for {model_id}: {summary}",
    )
    progress = advance(view, progress, now, policy)
    return progress.outcome(previous.revision if previous is not None else None)


def _send(
    view: ClusterView, progress: Progress, index: int, now: float, policy: Policy, *, fresh: bool
) -> Progress:
    """Send step ``index`` (another attempt when it was sent before; new ids when ``fresh``)."""
    plan, step = progress.plan, progress.plan.steps[index]
    attempt = step.attempts + 1
    changes: dict[str, object] = {"status": "sent", "attempts": attempt, "sent_at": now}
    if not step.first_sent_at:
        changes["first_sent_at"] = now
    if fresh:
        changes["command_id"] = retry_id(step.command_id, attempt)
        if step.op == "create":
            changes["instance_id"] = retry_id(step.instance_id, attempt)
    plan = msgspec.structs.replace(_with_step(plan, index, **changes), updated=now)
    step = plan.steps[index]
    command = step_command(view, plan, step, now, policy)
    if command is None:
        reason = f"model {step_model(plan, step)!r} is no longer registered"
        failing = Progress(plan, progress.memory, progress.effects, progress.notes)
        return _give_up(
            view,
            failing,
            index,
            code=ErrorCode.UNKNOWN_MODEL,
            reason=reason,
            now=now,
            policy=policy,
            may_exist=False,
        )
    what = f"attempt {attempt} of " if attempt > 1 else ""
    return Progress(
        plan, progress.memory.with_sent(step.command_id, now), progress.effects, progress.notes
    ).add(
        SendCommand(step.node, command),
        note=f"plan {plan.plan_id}: {what}{step.op} {step.instance_id} on {step.node} sent",
    )


def advance(view: ClusterView, progress: Progress, now: float, policy: Policy) -> Progress:
    """Send the next step of the current phase, or finish the plan when all are done."""
    plan = progress.plan
    indices = phase(plan)
    if any(plan.steps[i].status == "sent" for i in indices):
        return progress
    for i in indices:
        if plan.steps[i].status == "pending":
            return _send(view, progress, i, now, policy, fresh=False)
    if all(plan.steps[i].status == "done" for i in indices):
        status = "rolled_back" if undoing(plan) else "done"
        finished = msgspec.structs.replace(plan, status=status, updated=now)
        return Progress(finished, progress.memory, progress.effects, progress.notes).add(
            note=f"plan {plan.plan_id} for {plan.model_id} {status.replace('_', ' ')}"
        )
    return progress


def step_done(
    view: ClusterView, entry: PlanEntry, memory: Memory, index: int, *, now: float, policy: Policy
) -> Outcome:
    """Step ``index`` is done: learn what it cost, then go on with the plan."""
    plan = entry.plan
    step = plan.steps[index]
    if step.status == "done":
        return Outcome(memory, notes=(f"step {step.command_id} already done",))
    memory = memory.forget_commands({step.command_id})
    if step.op == "create" and step.first_sent_at:
        spec = view.models.get(step_model(plan, step))
        engine = spec.engine if spec is not None else "sim"
        memory = memory.with_swap_cost(
            engine, step.profile, max(now - step.first_sent_at, 0.0), alpha=policy.swap_cost_alpha
        )
    plan = msgspec.structs.replace(_with_step(plan, index, status="done"), updated=now)
    progress = Progress(plan, memory).add(
        note=f"plan {plan.plan_id}: {step.op} {step.instance_id} done"
    )
    return advance(view, progress, now, policy).outcome(entry.revision)


def step_failed(
    view: ClusterView,
    entry: PlanEntry,
    memory: Memory,
    index: int,
    *,
    code: ErrorCode,
    reason: str,
    now: float,
    policy: Policy,
    may_exist: bool = False,
) -> Outcome:
    """Step ``index`` failed with ``code``: try again when that may help, else give up."""
    step = entry.plan.steps[index]
    progress = Progress(entry.plan, memory.forget_commands({step.command_id}))
    if code in RETRYABLE and step.attempts < policy.max_step_attempts:
        note = (
            f"plan {entry.plan.plan_id}: {step.op} {step.instance_id} failed "
            f"({code.value}: {reason}); trying again"
        )
        progress = _send(view, progress.add(note=note), index, now, policy, fresh=True)
        return progress.outcome(entry.revision)
    return _give_up(
        view, progress, index, code=code, reason=reason, now=now, policy=policy, may_exist=may_exist
    ).outcome(entry.revision)


def step_timed_out(
    view: ClusterView, entry: PlanEntry, memory: Memory, index: int, *, now: float, policy: Policy
) -> Outcome:
    """No result for step ``index`` within ``step_timeout_s``: send it again, or give up."""
    step = entry.plan.steps[index]
    waited = (
        f"no result for {step.op} {step.instance_id} on {step.node} "
        f"after {policy.step_timeout_s:g} s"
    )
    progress = Progress(entry.plan, memory)
    if step.attempts < policy.max_step_attempts:
        progress = _send(
            view,
            progress.add(note=f"plan {entry.plan.plan_id}: {waited}"),
            index,
            now,
            policy,
            fresh=False,
        )
        return progress.outcome(entry.revision)
    reason = f"{waited} (attempt {step.attempts} of {policy.max_step_attempts})"
    may_exist = step.op == "create"
    out = _give_up(
        view, progress, index, code=ErrorCode.TIMEOUT, reason=reason, now=now, policy=policy,
        may_exist=may_exist,
    )  # fmt: skip
    return out.outcome(entry.revision)


def fail_plan(
    view: ClusterView,
    entry: PlanEntry,
    memory: Memory,
    *,
    code: ErrorCode,
    reason: str,
    now: float,
    policy: Policy,
) -> Outcome:
    """Fail the plan as a whole (it took too long): undo what it did."""
    index = step_in_flight(entry.plan)
    may_exist = index is not None and entry.plan.steps[index].op == "create"
    progress = Progress(entry.plan, memory)
    return _give_up(
        view, progress, index, code=code, reason=reason, now=now, policy=policy, may_exist=may_exist
    ).outcome(entry.revision)


def _give_up(
    view: ClusterView,
    progress: Progress,
    index: int | None,
    *,
    code: ErrorCode,
    reason: str,
    now: float,
    policy: Policy,
    may_exist: bool,
) -> Progress:
    """Fail step ``index`` for good: roll the plan back, or fail it when undoing failed."""
    plan = progress.plan
    if index is not None:
        step = plan.steps[index]
        reason = (
            f"{step.op} {step.profile} at {step.start} on {step.node}/gpu{step.gpu_index}: {reason}"
        )
    memory = progress.memory.forget_commands({s.command_id for s in plan.steps})
    if undoing(plan):
        plan = mark_failed(plan, index, reason, undoing=True)
        why = f"rollback failed: {reason}"
        return _finish_failed(progress, plan, memory, code=code, why=why, now=now)
    plan = mark_failed(plan, index, reason, undoing=False)
    undo = undo_steps(plan, index, may_exist=may_exist)
    why = f"{reason}; {describe_undo(undo)}"
    if not undo:
        return _finish_failed(progress, plan, memory, code=code, why=why, now=now)
    plan = msgspec.structs.replace(
        plan,
        steps=[*plan.steps, *undo],
        reason=f"{plan.reason}; failed: {why}" if plan.reason else why,
        updated=now,
    )
    event = ScaleFailed(
        model_id=plan.model_id, plan_id=plan.plan_id, code=code, reason=why, trace_id=plan.trace_id
    )
    failing = Progress(plan, memory, progress.effects, progress.notes).add(
        PublishEvent(event),
        note=f"plan {plan.plan_id} for {plan.model_id} failed: {code.value}: {why}",
    )
    return advance(view, failing, now, policy)


def _finish_failed(
    progress: Progress, plan: Plan, memory: Memory, *, code: ErrorCode, why: str, now: float
) -> Progress:
    plan = msgspec.structs.replace(
        plan,
        status="failed",
        reason=f"{plan.reason}; failed: {why}" if plan.reason else why,
        updated=now,
    )
    event = ScaleFailed(
        model_id=plan.model_id, plan_id=plan.plan_id, code=code, reason=why, trace_id=plan.trace_id
    )
    return Progress(plan, memory, progress.effects, progress.notes).add(
        PublishEvent(event),
        note=f"plan {plan.plan_id} for {plan.model_id} failed: {code.value}: {why}",
    )
