"""A removed model loses its instances: ``model.removed`` retires every one.

Removing a model from the registry (the gateway's admin API) deletes its
spec and publishes ``model.removed``. The scaler then plans one ``remove``
plan that retires each live instance (drain, stop, destroy the slice), under
the event's trace id. A plan already in flight for the model finishes or
rolls back first (its create steps cannot be sent without a spec); the
removal waits in memory and the tick starts it. A model registered again
before that is left alone.

Only the event triggers a removal, never the mere absence of a spec in the
view: a view read while the models bucket is briefly unreadable must not
retire anything.
"""

from __future__ import annotations

from migserve_shared.messages import ModelRemoved

from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.execute import Draft, start_plan
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.routes import retire_step
from migserve_scaler.core.view import ClusterView, Memory


def on_model_removed(
    view: ClusterView,
    memory: Memory,
    event: ModelRemoved,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    model_id = event.model_id
    if model_id in view.models:
        return Outcome(memory, notes=(f"{model_id} is registered again; nothing to remove",))
    memory = memory.with_removing(model_id, event.trace_id)
    return _remove(view, memory, model_id, now, policy=policy, ids=ids)


def on_tick(
    view: ClusterView, memory: Memory, now: float, *, policy: Policy, ids: IdSource
) -> Outcome:
    """Start the removals that waited for a plan in flight."""
    out = Outcome(memory)
    for model_id in sorted(memory.removing):
        if model_id in view.models:
            out = out.then(Outcome(out.memory.with_removing(model_id, None)))
        else:
            out = out.then(_remove(view, out.memory, model_id, now, policy=policy, ids=ids))
    return out


def _remove(
    view: ClusterView, memory: Memory, model_id: str, now: float, *, policy: Policy,
    ids: IdSource,
) -> Outcome:  # fmt: skip
    live = sorted(view.live_instances(model_id), key=lambda rec: rec.instance_id)
    if not live:
        return Outcome(
            memory.with_removing(model_id, None),
            notes=(f"{model_id} removed; it has no instance to retire",),
        )
    if (entry := view.plan_in_flight(model_id)) is not None:
        return Outcome(
            memory, notes=(f"removal of {model_id} waits for plan {entry.plan.plan_id}",)
        )
    trace_id = memory.removing.get(model_id) or ids("")
    names = ", ".join(rec.instance_id for rec in live)
    reason = f"model.removed: {model_id} is no longer registered; retire {names}"
    draft = Draft("remove", reason, tuple(retire_step(ids, rec) for rec in live))
    return start_plan(
        view, memory.with_removing(model_id, None), draft, model_id=model_id,
        trace_id=trace_id, now=now, policy=policy, ids=ids,
    )  # fmt: skip
