"""Demand for a model: make its first instance, or say why not.

A demand event means requests for the model are waiting and the gateway saw
no ready instance. When the model is registered, has no instance starting or
ready, and no plan in flight, the core plans one instance on the best
placement (``placement.choose_placement``): it writes the plan, announces it
with ``scale.decided`` (the demand's trace id, so the story is one trace) and
sends ``CreateInstance`` to the node's agent. When the model lost an
instance outside a plan that is not replaced yet, the replacement
(``replicas.replace_next``) answers the demand instead. A plan that finished
less than ``settle_s`` ago counts as a live instance until its instance shows
up in the view, unless that instance is known to have failed.
"""

from __future__ import annotations

from migserve_shared.errors import ErrorCode
from migserve_shared.messages import Demand, ModelSpec

from migserve_scaler.core.cluster import placement_nodes, reserved_slices
from migserve_scaler.core.commands import create_command
from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.execute import Draft, start_plan
from migserve_scaler.core.losses import notice, recently_done
from migserve_scaler.core.placement import (
    BadProfileBoundError,
    NoCapacity,
    Placement,
    choose_placement,
)
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.replicas import replace_next
from migserve_scaler.core.report import report_failure
from migserve_scaler.core.routes import create_step
from migserve_scaler.core.view import ClusterView, Memory

__all__ = ["create_command", "on_demand", "report_failure", "reserved_slices"]


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
    memory = memory.with_idle(model_id, None)
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
    memory = notice(view, memory, model_id, now)
    if memory.lost.get(model_id) and view.plan_in_flight(model_id) is None:
        replaced = replace_next(view, memory, model_id, now, policy=policy, ids=ids)
        if replaced is not None:  # the replacement of a lost instance answers the demand
            return replaced
    if view.live_instances(model_id) or recently_done(view, memory, model_id, now, policy):
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
        choice = choose_placement(spec, placement_nodes(view), reserved_slices(view))
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
        view, spec, choice, memory, trace_id=event.trace_id, now=now, policy=policy, ids=ids
    )


def _create_plan(
    view: ClusterView,
    spec: ModelSpec,
    where: Placement,
    memory: Memory,
    *,
    trace_id: str,
    now: float,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    reason = (
        f"demand: no instance of {spec.model_id}; {where.profile} ({where.profile_memory_mb} MB) "
        f"is the smallest profile that holds {spec.memory_mb} MB"
    )
    draft = Draft("create", reason, (create_step(ids, where),))
    return start_plan(
        view,
        memory,
        draft,
        model_id=spec.model_id,
        trace_id=trace_id,
        now=now,
        policy=policy,
        ids=ids,
    )
