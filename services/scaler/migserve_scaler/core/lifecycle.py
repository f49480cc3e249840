"""Plans in flight: results of their steps, and what time alone decides.

A create step is done when its command is done (``command.done``: the agent
answers once the instance is ready) or its instance is ready
(``instance.ready``, or the record says so); it fails on ``command.failed``,
``instance.failed`` or a record in state ``failed``. A retire step is done on
``command.done``, ``instance.stopped``, ``instance.failed`` or when the
instance record is gone or stopped (an undo step waits for its command's
answer: the instance it retires may not have been recorded yet).

Each tick, for every plan in flight: a plan past its time limit
(``plan_timeout_s`` per slice it creates) fails and is rolled back; a step
without a result after ``step_timeout_s`` is sent again or fails; a command
the scaler does not remember sending (it restarted) or sent more than
``resend_after_s`` ago is published again (the stream drops duplicates); a
plan whose next step was never sent gets it sent.
"""

from __future__ import annotations

from typing import TypeAlias

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    InstanceFailed,
    InstanceReady,
    InstanceStopped,
)

from migserve_scaler.core.commands import step_command
from migserve_scaler.core.effects import Outcome, SendCommand
from migserve_scaler.core.execute import (
    Progress,
    advance,
    fail_plan,
    step_done,
    step_failed,
    step_in_flight,
    step_timed_out,
    undoing,
)
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import IN_FLIGHT, ClusterView, Memory, PlanEntry

StepResult: TypeAlias = (
    CommandDone | CommandFailed | InstanceReady | InstanceFailed | InstanceStopped
)

__all__ = ["StepResult", "fail_plan", "on_step_result", "on_tick", "reports_on"]


def _find(view: ClusterView, event: StepResult) -> tuple[PlanEntry, int] | None:
    """The plan in flight and the index of its step in flight that ``event`` reports on."""
    for entry in view.plans.values():
        if entry.plan.status not in IN_FLIGHT:
            continue
        index = step_in_flight(entry.plan)
        if index is None:
            continue
        step = entry.plan.steps[index]
        if isinstance(event, CommandDone | CommandFailed):
            if step.command_id == event.command_id:
                return entry, index
        elif step.instance_id == event.instance_id:
            if isinstance(event, InstanceReady) and step.op != "create":
                continue
            if isinstance(event, InstanceStopped) and step.op != "retire":
                continue
            return entry, index
    return None


def reports_on(view: ClusterView, event: StepResult) -> bool:
    """Whether ``event`` reports on the step in flight of some plan."""
    return _find(view, event) is not None


def on_step_result(
    view: ClusterView,
    memory: Memory,
    event: StepResult,
    now: float,
    *,
    policy: Policy | None = None,
) -> Outcome:
    """Advance the plan whose step in flight ``event`` reports on (if any)."""
    policy = policy or Policy()
    found = _find(view, event)
    if found is None:
        return Outcome(memory)
    entry, index = found
    step = entry.plan.steps[index]
    if isinstance(event, CommandDone | InstanceReady | InstanceStopped):
        return step_done(view, entry, memory, index, now=now, policy=policy)
    if isinstance(event, InstanceFailed) and step.op == "retire":
        return step_done(view, entry, memory, index, now=now, policy=policy)  # gone, slice freed
    return step_failed(
        view,
        entry,
        memory,
        index,
        code=event.code,
        reason=event.reason or event.code.value,
        now=now,
        policy=policy,
    )


def _plan_limit(entry: PlanEntry, policy: Policy) -> float:
    creates = sum(1 for s in entry.plan.steps if s.op == "create" and not s.rollback)
    return policy.plan_timeout_s * max(creates, 1)


def _tick_plan(
    view: ClusterView, entry: PlanEntry, memory: Memory, now: float, policy: Policy
) -> Outcome:
    plan = entry.plan
    limit = _plan_limit(entry, policy)
    if not undoing(plan) and now - plan.created > limit:
        pending = [s for s in plan.steps if s.status != "done"]
        detail = ", ".join(f"{s.op} {s.instance_id} on {s.node}" for s in pending)
        return fail_plan(
            view,
            entry,
            memory,
            code=ErrorCode.TIMEOUT,
            reason=f"plan still in flight after {limit:g} s ({detail})",
            now=now,
            policy=policy,
        )
    index = step_in_flight(plan)
    if index is None:  # the next step was never sent (a restart between write and send)
        progress = advance(view, Progress(plan, memory), now, policy)
        if progress.plan == plan:
            return Outcome(memory)
        return progress.outcome(entry.revision)
    step = plan.steps[index]
    record = view.instances.get(step.instance_id)
    if step.op == "create":
        if record is not None and record.state == "ready":
            return step_done(view, entry, memory, index, now=now, policy=policy)
        if record is not None and record.state == "failed":
            reason = record.reason or "instance failed"
            return step_failed(
                view, entry, memory, index, code=ErrorCode.ENGINE_FAILED, reason=reason, now=now,
                policy=policy,
            )  # fmt: skip
    elif (record is None and not step.rollback) or (
        record is not None and record.state in ("stopped", "failed")
    ):
        return step_done(view, entry, memory, index, now=now, policy=policy)
    if now - step.sent_at > policy.step_timeout_s:
        return step_timed_out(view, entry, memory, index, now=now, policy=policy)
    last = memory.sent.get(step.command_id)
    if last is not None and now - last < policy.resend_after_s:
        return Outcome(memory)
    command = step_command(view, plan, step, now, policy)
    if command is None:
        return Outcome(memory)
    why = "not known to have been sent" if last is None else "no result yet"
    return Outcome(
        memory.with_sent(step.command_id, now),
        effects=(SendCommand(step.node, command),),
        notes=(f"command {step.command_id} sent again ({why})",),
    )


def on_tick(view: ClusterView, memory: Memory, now: float, *, policy: Policy) -> Outcome:
    """Time-driven transitions of every plan in flight."""
    out = Outcome(memory)
    for model_id in sorted(view.plans):
        entry = view.plan_in_flight(model_id)
        if entry is not None:
            out = out.then(_tick_plan(view, entry, out.memory, now, policy))
    return out
