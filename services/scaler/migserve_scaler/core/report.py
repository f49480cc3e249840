"""Rate-limited scale.failed events: why the scaler could not do what a model needs."""

from __future__ import annotations

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import ScaleFailed

from migserve_scaler.core.effects import Outcome, PublishEvent
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import Memory


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
        return Outcome(memory, notes=(f"{code.value} for {model_id} already reported: {reason}",))
    event = ScaleFailed(
        model_id=model_id, plan_id=plan_id, code=code, reason=reason, trace_id=trace_id
    )
    return Outcome(
        memory.with_report(model_id, code.value, now),
        effects=(PublishEvent(event),),
        notes=(f"scale failed for {model_id}: {code.value}: {reason}",),
    )
