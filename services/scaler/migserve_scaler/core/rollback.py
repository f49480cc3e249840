"""Undoing a plan that failed: the steps that bring the model back to where it was.

The rules, for the forward steps of the plan up to its failure:

* a create whose instance may exist (done, or timed out without an answer)
  and is not switched in is retired again (``RetireInstance``: the agent
  drains it and destroys its new slice). A new instance is switched in once
  the retirement of the instance it replaces has begun (or when it replaces
  none): after that, traffic depends on it and it stays;
* a create that failed at the agent needs nothing: the agent already
  stopped its processes and destroyed its slice;
* break before make: when the old instance was retired and its replacement
  is not ready, a slice of the old profile is made again at the old place.

Instances the plan did not touch are never retired, so the old instance of a
make-before-break swap is kept. Ids of undo steps derive from the steps they
undo, so a restarted scaler computes the same ones.
"""

from __future__ import annotations

import re

import msgspec
from migserve_shared.messages import Plan, PlanStep

_ATTEMPT = re.compile(r"-r\d+$")


def _base(value: str) -> str:
    return _ATTEMPT.sub("", value)


def mark_failed(plan: Plan, failed: int | None, reason: str, *, undoing: bool) -> Plan:
    """The plan with step ``failed`` failed and the steps of its phase (forward, or
    undo when ``undoing``) not yet run skipped."""
    steps: list[PlanStep] = []
    for i, s in enumerate(plan.steps):
        if i == failed:
            steps.append(msgspec.structs.replace(s, status="failed", reason=reason))
        elif s.status == "pending" and s.rollback == undoing:
            steps.append(msgspec.structs.replace(s, status="failed", reason="skipped"))
        else:
            steps.append(s)
    return msgspec.structs.replace(plan, steps=steps)


def undo_steps(plan: Plan, failed: int | None, *, may_exist: bool) -> list[PlanStep]:
    """Steps that undo ``plan`` (whose step ``failed`` just failed), in order.

    ``may_exist``: the failed step is a create whose instance may exist anyway
    (it timed out rather than failed at the agent).
    """
    forward = [(i, s) for i, s in enumerate(plan.steps) if not s.rollback]
    #: instances whose retirement began (sent at least once, whatever became of it)
    retiring = {s.instance_id for _, s in forward if s.op == "retire" and s.attempts > 0}
    undo: list[PlanStep] = []
    for i, s in forward:
        if s.op != "create":
            continue
        exists = s.status == "done" or (i == failed and may_exist)
        switched = s.status == "done" and (not s.replaces or s.replaces in retiring)
        if exists and not switched:
            undo.append(
                msgspec.structs.replace(
                    s,
                    op="retire",
                    command_id=f"{_base(s.command_id)}-undo",
                    status="pending",
                    reason=f"undo: {s.instance_id} was not switched in",
                    attempts=0,
                    sent_at=0.0,
                    first_sent_at=0.0,
                    replaces="",
                    rollback=True,
                )
            )
    if plan.break_before_make:
        undo.extend(_recreate_old(plan, [s for _, s in forward]))
    return undo


def _recreate_old(plan: Plan, forward: list[PlanStep]) -> list[PlanStep]:
    """Break before make: the old profile again where it was, for each old instance
    retired whose replacement is not ready."""
    out: list[PlanStep] = []
    for s in forward:
        if s.op != "retire" or s.status != "done":
            continue
        replacement = next(
            (c for c in forward if c.op == "create" and c.replaces == s.instance_id), None
        )
        if replacement is not None and replacement.status == "done":
            continue
        out.append(
            msgspec.structs.replace(
                s,
                op="create",
                command_id=f"{_base(s.command_id)}-back",
                instance_id=f"{s.instance_id}-back",
                status="pending",
                reason=f"undo: {s.profile} again at {s.start} in place of {s.instance_id}",
                attempts=0,
                sent_at=0.0,
                first_sent_at=0.0,
                replaces="",
                rollback=True,
            )
        )
    return out


def describe_undo(steps: list[PlanStep]) -> str:
    if not steps:
        return "nothing to undo"
    parts = []
    for s in steps:
        where = f"{s.node}/gpu{s.gpu_index}"
        if s.op == "retire":
            parts.append(f"retire {s.instance_id} ({s.profile} at {s.start} on {where})")
        else:
            parts.append(f"make {s.profile} at {s.start} on {where} again ({s.instance_id})")
    return "rolling back: " + ", ".join(parts)
