"""Underload and idleness: one replica fewer, one step down, or none at all.

On ``slo.underload`` for a model with no plan in flight and none finished
within ``cooldown_s``:

* more live replicas than ``max(min_replicas, 1)``: retire the smallest
  ready one (the newest of equals);
* else one compute step down for its largest ready instance
  (``ladder.step_down``: never below the memory the model needs nor its
  ``min_profile``), make before break, where a smaller slice fits now (an
  underloaded model is not worth moving others for, nor a break);
* scale to zero first when the model is due (``idle.zero_due``): every
  replica is retired, one after another.

``metrics.snapshot`` events only feed the idle tracking (and may scale to
zero).
"""

from __future__ import annotations

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import MetricsSnapshot, SloUnderload

from migserve_scaler.core import idle
from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.execute import Draft, start_plan
from migserve_scaler.core.ladder import step_down
from migserve_scaler.core.placement import BadProfileBoundError
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.report import report_failure
from migserve_scaler.core.resize import blocked, ladder_model, ready_instances, room_for
from migserve_scaler.core.routes import create_step, place, retire_step
from migserve_scaler.core.view import ClusterView, Memory


def _to_zero(
    view: ClusterView, memory: Memory, model_id: str, trace_id: str, now: float,
    *, policy: Policy, ids: IdSource,
) -> Outcome | None:  # fmt: skip
    """Retire every replica of an idle model, or None when it is not due."""
    spec = view.models.get(model_id)
    if spec is None or not idle.zero_due(view, memory, spec, now):
        return None
    if blocked(view, model_id, now, policy) is not None:
        return None
    live = view.live_instances(model_id)
    ready = [rec for _, rec in ready_instances(view, model_id)]
    if len(ready) != len(live):
        return Outcome(memory, notes=(f"{model_id} idle, but not every replica is ready",))
    since = memory.idle_since[model_id]
    reason = (
        f"idle for {now - since:.0f} s (nothing in flight, waiting or arriving; limit "
        f"{spec.idle_to_zero_s:g} s): scale to zero, {len(ready)} replica(s) retired; "
        "demand brings the model back"
    )
    steps = tuple(retire_step(ids, rec) for rec in reversed(ready))
    draft = Draft("scale_in", reason, steps)
    memory = memory.with_idle(model_id, None)
    return start_plan(
        view, memory, draft, model_id=model_id, trace_id=trace_id or ids(""), now=now,
        policy=policy, ids=ids,
    )  # fmt: skip


def on_snapshot(
    view: ClusterView,
    memory: Memory,
    event: MetricsSnapshot,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    memory = idle.track(memory, event.model_id, event.evidence, event.time)
    zero = _to_zero(view, memory, event.model_id, event.trace_id, now, policy=policy, ids=ids)
    return zero if zero is not None else Outcome(memory)


def on_underload(
    view: ClusterView,
    memory: Memory,
    event: SloUnderload,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    model_id = event.model_id
    memory = idle.track(memory, model_id, event.evidence, event.time)
    zero = _to_zero(view, memory, model_id, event.trace_id, now, policy=policy, ids=ids)
    if zero is not None:
        return zero
    if (why := blocked(view, model_id, now, policy)) is not None:
        return Outcome(memory, notes=(f"underload of {model_id} not acted on: {why}",))
    spec = view.models[model_id]
    ready = ready_instances(view, model_id)
    if not ready:
        return Outcome(memory, notes=(f"underload of {model_id}: no ready instance to shrink",))
    live = len(view.live_instances(model_id))
    floor = max(spec.min_replicas, 1)
    ev = event.evidence
    tpot = "idle" if ev.tpot_ms is None else f"TPOT {ev.tpot_ms:.1f} ms"
    cause = (
        f"slo.underload: {tpot} (SLO {ev.slo_ms:g} ms) "
        f"for {ev.windows} windows of {ev.window_s:g} s"
    )
    if live > floor:
        _, rec = min(ready, key=lambda item: (item[0][1], item[0][0], -item[1].created))
        reason = (
            f"{cause}; one replica fewer ({live - 1} left, at least {floor}): "
            f"retire {rec.instance_id}"
        )
        draft = Draft("scale_in", reason, (retire_step(ids, rec),))
        return start_plan(
            view, memory, draft, model_id=model_id, trace_id=event.trace_id, now=now,
            policy=policy, ids=ids,
        )  # fmt: skip
    shape, rec = ready[-1]
    model = ladder_model(view, rec)
    try:
        lower = step_down(model, spec, shape) if model is not None else None
        where = place(spec, room_for(view), lower) if lower is not None else None
    except BadProfileBoundError as exc:
        return report_failure(
            memory, model_id=model_id, code=ErrorCode.BAD_REQUEST, reason=str(exc),
            trace_id=event.trace_id, now=now, policy=policy,
        )  # fmt: skip
    if lower is None:
        return Outcome(memory, notes=(f"underload of {model_id}: already at its smallest profile",))
    if where is None:
        return Outcome(memory, notes=(f"underload of {model_id}: no room for a smaller slice now",))
    reason = (
        f"{cause}; one step down: {rec.instance_id} {rec.profile} -> {where.profile} at "
        f"{where.start} on {where.node}/gpu{where.gpu_index} (make before break)"
    )
    steps = (create_step(ids, where, replaces=rec.instance_id), retire_step(ids, rec))
    return start_plan(
        view, memory, Draft("scale_down", reason, steps), model_id=model_id,
        trace_id=event.trace_id, now=now, policy=policy, ids=ids,
    )  # fmt: skip
