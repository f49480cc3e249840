"""Plans the scaler starts without being asked: replacing lost instances, ``min_replicas``.

* **Replacement.** An instance that failed or vanished outside a plan
  (``losses.notice``) is replaced by a new instance of the same profile
  (where it fits; else of any profile that holds the model), placed like a
  new replica (free room, else moves of other instances). The plan's action
  is ``create``, its reason ``replace failed instance <id>: ...`` and its trace
  id the failure's. It starts at once on ``instance.failed`` (or on demand,
  or on the next tick) when the model has no plan in flight; otherwise the
  loss waits for that plan to finish. Losses of an idle model that may scale
  to zero, of a model no longer registered or already at ``max_replicas``
  are dropped: demand brings such a model back.
* **Floor.** A registered model with fewer live instances than
  ``min_replicas`` (bounded by ``max_replicas``) and no plan in flight gets
  one more instance per plan on the tick, without waiting for demand.

Both wait ``replace_backoff_s`` after a failed plan of the model, and report
``no_capacity`` (rate-limited) when no GPU can take the instance.
"""

from __future__ import annotations

import dataclasses

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import InstanceFailed, InstanceRecord, ModelSpec, PlanAction

from migserve_scaler.core.cluster import Shape, shape_of
from migserve_scaler.core.effects import IdSource, Outcome, PutPlan
from migserve_scaler.core.execute import Draft, start_plan
from migserve_scaler.core.ladder import bounds
from migserve_scaler.core.losses import (
    live_by_model,
    notice,
    recently_done,
    replace_reason,
    retired_ids,
)
from migserve_scaler.core.placement import BadProfileBoundError, profile_rank
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.report import report_failure
from migserve_scaler.core.resize import describe_route, room_for
from migserve_scaler.core.routes import Route, replica_route
from migserve_scaler.core.view import ClusterView, Memory, PlanEntry

__all__ = ["floor_next", "on_instance_lost", "on_tick", "replace_next"]


def _backing_off(view: ClusterView, model_id: str, now: float, policy: Policy) -> bool:
    last = view.plans.get(model_id)
    return (
        last is not None
        and last.plan.status in ("failed", "rolled_back")
        and now - last.plan.updated < policy.replace_backoff_s
    )


def _lost_shape(spec: ModelSpec, profile: str) -> Shape | None:
    """The shape of a lost instance's profile, when the model may still use it."""
    try:
        shape = profile_rank(profile)
        low, high = bounds(spec)
    except BadProfileBoundError:
        return None
    return shape if low <= shape <= high else None


def _route(
    view: ClusterView, spec: ModelSpec, shape: Shape | None, *, ids: IdSource, policy: Policy
) -> Route | None:
    return replica_route(view, spec, room_for(view), shape, ids=ids, max_moves=policy.max_moves)


def _where(route: Route) -> str:
    t = route.target
    return f"{t.profile} at {t.start} on {t.node}/gpu{t.gpu_index} ({describe_route(route)})"


def replace_next(
    view: ClusterView, memory: Memory, model_id: str, now: float, *, policy: Policy, ids: IdSource
) -> Outcome | None:
    """Start the plan that replaces the model's oldest loss (None: nothing to replace)."""
    queued = memory.lost.get(model_id, ())
    if not queued:
        return None
    spec = view.models.get(model_id)
    if spec is None:
        return Outcome(memory.with_lost(model_id, ()), notes=(f"{model_id} is not registered",))
    if (entry := view.plan_in_flight(model_id)) is not None:
        note = f"replacing {queued[0].instance_id} waits for plan {entry.plan.plan_id}"
        return Outcome(memory, notes=(note,))
    live = len(view.live_instances(model_id))
    drop = ""
    if spec.min_replicas == 0 and spec.idle_to_zero_s > 0 and model_id in memory.idle_since:
        drop = "it is idle and may scale to zero; demand brings it back"
    elif live >= spec.max_replicas:
        drop = f"it has {live} of at most {spec.max_replicas} replicas"
    if drop:
        gone = ", ".join(x.instance_id for x in queued)
        return Outcome(
            memory.with_lost(model_id, ()), notes=(f"{model_id} lost {gone}; not replaced: {drop}",)
        )
    if _backing_off(view, model_id, now, policy):
        return Outcome(memory, notes=(f"replacing for {model_id} backs off after a failed plan",))
    first = queued[0]
    try:
        route = _route(view, spec, _lost_shape(spec, first.profile), ids=ids, policy=policy)
    except BadProfileBoundError as exc:
        return report_failure(
            memory, model_id=model_id, code=ErrorCode.BAD_REQUEST, reason=str(exc),
            trace_id=first.trace_id, now=now, policy=policy,
        )  # fmt: skip
    if route is None:
        return report_failure(
            memory, model_id=model_id, code=ErrorCode.NO_CAPACITY, trace_id=first.trace_id,
            reason=f"no GPU can take a replacement for failed instance {first.instance_id} "
            f"({first.profile}) of {model_id}",
            now=now, policy=policy,
        )  # fmt: skip
    reason = (
        f"{replace_reason(first.instance_id)} {first.profile} instance of {model_id} "
        f"failed or vanished outside any plan ({live} live now); new {_where(route)}"
    )
    draft = Draft("create", reason, route.steps, headline=len(route.steps) - 1)
    return start_plan(
        view, memory.with_lost(model_id, queued[1:]), draft, model_id=model_id,
        trace_id=first.trace_id or ids(""), now=now, policy=policy, ids=ids,
    )  # fmt: skip


def floor_next(
    view: ClusterView, memory: Memory, spec: ModelSpec, now: float, *, policy: Policy,
    ids: IdSource, live: list[InstanceRecord] | None = None,
) -> Outcome | None:  # fmt: skip
    """One more instance for a model below ``min_replicas`` (None: not below, or must wait).
    ``live``: the model's live instances, when already known."""
    model_id = spec.model_id
    want = min(spec.min_replicas, spec.max_replicas)
    if want <= 0:
        return None
    if live is None:
        live = view.live_instances(model_id)
    if len(live) >= want or view.plan_in_flight(model_id) is not None:
        return None
    if recently_done(view, memory, model_id, now, policy) or _backing_off(
        view, model_id, now, policy
    ):
        return None
    shapes = [s for s in (shape_of(view, r) for r in live) if s is not None]
    trace_id = ids("")
    try:
        route = _route(view, spec, max(shapes) if shapes else None, ids=ids, policy=policy)
    except BadProfileBoundError as exc:
        return report_failure(
            memory, model_id=model_id, code=ErrorCode.BAD_REQUEST, reason=str(exc),
            trace_id=trace_id, now=now, policy=policy,
        )  # fmt: skip
    if route is None:
        return report_failure(
            memory, model_id=model_id, code=ErrorCode.NO_CAPACITY, trace_id=trace_id,
            reason=f"no GPU can take instance {len(live) + 1} of the {want} that "
            f"min_replicas asks for {model_id}",
            now=now, policy=policy,
        )  # fmt: skip
    reason = (
        f"min_replicas: {model_id} has {len(live)} live of at least {want} replicas; "
        f"one more: {_where(route)}"
    )
    action: PlanAction = "create" if not live else "scale_out"
    draft = Draft(action, reason, route.steps, headline=len(route.steps) - 1)
    return start_plan(
        view, memory, draft, model_id=model_id, trace_id=trace_id, now=now, policy=policy,
        ids=ids,
    )  # fmt: skip


def on_instance_lost(
    view: ClusterView,
    memory: Memory,
    event: InstanceFailed,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    """``instance.failed`` that no plan in flight was waiting for: replace the loss."""
    memory = notice(view, memory, event.model_id, now, failure=event)
    out = replace_next(view, memory, event.model_id, now, policy=policy, ids=ids)
    return out if out is not None else Outcome(memory)


def on_tick(
    view: ClusterView, memory: Memory, now: float, *, policy: Policy, ids: IdSource
) -> Outcome:
    """Notice losses of every model, then replace one or reach the floor, per model
    without a plan in flight."""
    busy = {m for m in view.plans if view.plan_in_flight(m) is not None}
    live = live_by_model(view)
    retiring = retired_ids(view)
    out = Outcome(memory)
    for model_id in sorted(view.models.keys() | memory.seen.keys() | memory.lost.keys()):
        noticed = notice(
            view, out.memory, model_id, now, live=live.get(model_id, {}), retiring=retiring
        )
        out = out.then(Outcome(noticed))
        spec = view.models.get(model_id)
        if spec is None or model_id in busy:
            continue
        step = replace_next(view, out.memory, model_id, now, policy=policy, ids=ids)
        if step is None:
            step = floor_next(
                view, out.memory, spec, now, policy=policy, ids=ids,
                live=list(live.get(model_id, {}).values()),
            )  # fmt: skip
        if step is None:
            continue
        out = out.then(step)
        for effect in step.effects:  # later models see this plan's reservations
            if isinstance(effect, PutPlan):
                plans = {**view.plans, model_id: PlanEntry(effect.plan, -1)}
                view = dataclasses.replace(view, plans=plans)
    return out
