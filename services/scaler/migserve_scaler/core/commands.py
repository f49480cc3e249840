"""The agent command that carries out a plan step, and the ids of retried steps.

Ids of retried or undoing steps are derived from the step's own ids, so a
scaler that restarts in the middle of a plan makes the same ones again (the
commands stream and the agent drop the duplicates).
"""

from __future__ import annotations

import re

from migserve_shared.messages import (
    Command,
    CreateInstance,
    ModelSpec,
    Plan,
    PlanStep,
    RetireInstance,
)

from migserve_scaler.core.cluster import step_model
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import ClusterView

_ATTEMPT = re.compile(r"-r\d+$")


def retry_id(value: str, attempt: int) -> str:
    """The id of attempt ``attempt`` (2, 3, ...) of a step whose first id was ``value``."""
    return f"{_ATTEMPT.sub('', value)}-r{attempt}"


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


def retire_command(plan: Plan, step: PlanStep, now: float, policy: Policy) -> RetireInstance:
    """The agent command that carries out a retire step (drain, stop, destroy the slice)."""
    return RetireInstance(
        command_id=step.command_id,
        trace_id=plan.trace_id,
        plan_id=plan.plan_id,
        issued_at=now,
        instance_id=step.instance_id,
        drain_timeout_s=policy.drain_timeout_s,
    )


def step_command(
    view: ClusterView, plan: Plan, step: PlanStep, now: float, policy: Policy
) -> Command | None:
    """The step's command; None for a create whose model is no longer registered."""
    if step.op == "retire":
        return retire_command(plan, step, now, policy)
    spec = view.models.get(step_model(plan, step))
    return None if spec is None else create_command(spec, plan, step, now)
