"""SLO violations: one step up for the model, or one more replica.

On ``slo.violation`` for a model that has a ready instance, no plan in flight
and no plan finished within ``cooldown_s``:

* vertical models (the default) replace their smallest ready instance by a
  slice one compute step bigger (``ladder.steps_up``; the next bigger step
  that is placeable when the next is not), make before break; at the largest
  profile their bounds allow, or when no bigger slice can be had, they add a
  replica of their largest profile instead, up to ``max_replicas``;
* horizontal models add a replica first and step up once at ``max_replicas``;
* at both limits, ``scale.failed`` with code ``at_limit``; with no room,
  ``no_capacity`` (both at most once per ``failure_report_interval_s``).

A plan whose slices are expected to take longer to get ready than the load
behind the violation is expected to last is not started
(``swapcost.too_slow``; evented as ``scale.failed`` with ``swap_too_slow``).
"""

from __future__ import annotations

from dataclasses import dataclass

from migserve_shared import mig
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import InstanceRecord, ModelSpec, SloViolation

from migserve_scaler.core.cluster import (
    Shape,
    busy_instances,
    instance_gpu_model,
    placement_nodes,
    reserved_slices,
    shape_of,
)
from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.execute import Draft, start_plan
from migserve_scaler.core.ladder import describe, steps_up
from migserve_scaler.core.placement import BadProfileBoundError
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.report import report_failure
from migserve_scaler.core.routes import Room, Route, replacement_route, replica_route
from migserve_scaler.core.swapcost import plan_cost, too_slow
from migserve_scaler.core.view import FINISHED, ClusterView, Memory


def blocked(view: ClusterView, model_id: str, now: float, policy: Policy) -> str | None:
    """Why no SLO-driven plan may start for the model now (None: one may)."""
    if model_id not in view.models:
        return f"{model_id} is not registered"
    if (entry := view.plan_in_flight(model_id)) is not None:
        return f"plan {entry.plan.plan_id} for {model_id} in flight"
    last = view.plans.get(model_id)
    if last is not None and last.plan.status in FINISHED:
        left = policy.cooldown_s - (now - last.plan.updated)
        if left > 0:
            return f"{model_id} cooling down for {left:.0f} s more after plan {last.plan.plan_id}"
    return None


def room_for(view: ClusterView) -> Room:
    busy = busy_instances(view)
    movable = [
        r
        for r in view.instances.values()
        if r.state == "ready" and r.instance_id not in busy and r.model_id in view.models
    ]
    return Room(placement_nodes(view), reserved_slices(view), movable)


def ladder_model(view: ClusterView, rec: InstanceRecord) -> mig.GpuModel | None:
    """The GPU model whose profiles an instance steps through."""
    model = instance_gpu_model(view, rec)
    if model is not None:
        return model
    return next((m for m in mig.GPU_MODELS if any(p.name == rec.profile for p in m.profiles)), None)


def ready_instances(view: ClusterView, model_id: str) -> list[tuple[Shape, InstanceRecord]]:
    """The model's ready instances no plan in flight touches, with their shapes,
    smallest first (then oldest)."""
    busy = busy_instances(view)
    out = []
    for rec in view.live_instances(model_id):
        shape = shape_of(view, rec)
        if rec.state == "ready" and rec.instance_id not in busy and shape is not None:
            out.append((shape, rec))
    out.sort(key=lambda item: (item[0][1], item[0][0], item[1].created, item[1].instance_id))
    return out


@dataclass(frozen=True, slots=True)
class _Choice:
    draft: Draft | None
    code: ErrorCode = ErrorCode.NO_CAPACITY
    why: str = ""


def _up(
    view: ClusterView, spec: ModelSpec, room: Room, rec: InstanceRecord, shape: Shape,
    *, ids: IdSource, policy: Policy, cause: str,
) -> tuple[Draft | None, str]:  # fmt: skip
    model = ladder_model(view, rec)
    ups = steps_up(model, spec, shape) if model is not None else []
    if not ups:
        return None, f"{rec.instance_id} is at the largest profile {spec.model_id} may use"
    route = replacement_route(
        view, spec, room, rec, ups, ids=ids, max_moves=policy.max_moves,
        break_before_make=policy.allow_break_before_make,
    )  # fmt: skip
    if route is None:
        return None, f"no GPU can take a {describe(ups[0])} slice for {spec.model_id}"
    how = describe_route(route)
    reason = (
        f"{cause}; one step up: {rec.instance_id} {rec.profile} -> {route.target.profile} at "
        f"{route.target.start} on {route.target.node}/gpu{route.target.gpu_index} ({how})"
    )
    headline = len(route.steps) - 1 if route.break_before_make else len(route.steps) - 2
    return Draft("scale_up", reason, route.steps, route.break_before_make, headline), ""


def _out(
    view: ClusterView, spec: ModelSpec, room: Room, shape: Shape | None, replicas: int,
    *, ids: IdSource, policy: Policy, cause: str,
) -> tuple[Draft | None, str]:  # fmt: skip
    if replicas >= spec.max_replicas:
        return None, f"{spec.model_id} has {replicas} of at most {spec.max_replicas} replicas"
    route = replica_route(view, spec, room, shape, ids=ids, max_moves=policy.max_moves)
    if route is None:
        return None, f"no GPU can take another replica of {spec.model_id}"
    reason = (
        f"{cause}; one more replica ({replicas + 1} of at most {spec.max_replicas}): "
        f"{route.target.profile} at {route.target.start} on {route.target.node}/gpu"
        f"{route.target.gpu_index} ({describe_route(route)})"
    )
    return Draft("scale_out", reason, route.steps, headline=len(route.steps) - 1), ""


def describe_route(route: Route) -> str:
    if route.break_before_make:
        return "break before make: nothing else fits; requests are held meanwhile"
    if route.moves:
        return f"make before break after {route.moves} move(s) of other instances"
    return "make before break"


def _grow(view: ClusterView, spec: ModelSpec, ids: IdSource, policy: Policy, cause: str) -> _Choice:
    ready = ready_instances(view, spec.model_id)
    if not ready:
        return _Choice(None, why="")
    replicas = len(view.live_instances(spec.model_id))
    room = room_for(view)
    smallest_shape, smallest = ready[0]
    largest_shape = max(s for s, _ in ready)
    attempts = ("up", "out") if spec.scaling == "vertical" else ("out", "up")
    whys: list[str] = []
    for kind in attempts:
        if kind == "up":
            draft, why = _up(
                view, spec, room, smallest, smallest_shape, ids=ids, policy=policy, cause=cause
            )
        else:
            draft, why = _out(
                view, spec, room, largest_shape, replicas, ids=ids, policy=policy, cause=cause
            )
        if draft is not None:
            return _Choice(draft)
        whys.append(why)
    at_limit = all("largest profile" in w or "at most" in w for w in whys)
    return _Choice(None, ErrorCode.AT_LIMIT if at_limit else ErrorCode.NO_CAPACITY, "; ".join(whys))


def _cause(event: SloViolation) -> str:
    ev = event.evidence
    tpot = "unknown" if ev.tpot_ms is None else f"{ev.tpot_ms:.1f} ms"
    return (
        f"slo.violation: TPOT {tpot} > SLO {ev.slo_ms:g} ms "
        f"for {ev.windows} windows of {ev.window_s:g} s"
    )


def on_violation(
    view: ClusterView,
    memory: Memory,
    event: SloViolation,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    model_id = event.model_id
    memory = memory.with_idle(model_id, None)
    if (why := blocked(view, model_id, now, policy)) is not None:
        return Outcome(memory, notes=(f"violation for {model_id} not acted on: {why}",))
    spec = view.models[model_id]

    def fail(code: ErrorCode, reason: str) -> Outcome:
        return report_failure(
            memory, model_id=model_id, code=code, reason=reason, trace_id=event.trace_id,
            now=now, policy=policy,
        )  # fmt: skip

    try:
        choice = _grow(view, spec, ids, policy, _cause(event))
    except BadProfileBoundError as exc:
        return fail(ErrorCode.BAD_REQUEST, str(exc))
    if choice.draft is None:
        if not choice.why:
            return Outcome(memory, notes=(f"violation for {model_id}: no ready instance to scale",))
        return fail(choice.code, choice.why)
    cost = plan_cost(view, memory, model_id, choice.draft.steps, policy)
    if (slow := too_slow(cost, event.evidence, policy)) is not None:
        return fail(
            ErrorCode.SWAP_TOO_SLOW, f"{choice.draft.action} of {model_id} not started: {slow}"
        )
    return start_plan(
        view,
        memory,
        choice.draft,
        model_id=model_id,
        trace_id=event.trace_id,
        now=now,
        policy=policy,
        ids=ids,
    )
