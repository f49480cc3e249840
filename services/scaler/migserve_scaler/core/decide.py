"""The scaler's decision core: (view, memory, event or tick, now) -> outcome.

Pure functions: no I/O, no clocks, no randomness (ids come from ``ids``).
The adapters keep the view current, run the outcome's effects in order and
keep the outcome's memory only when every effect succeeded.
"""

from __future__ import annotations

from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    Demand,
    Event,
    InstanceFailed,
    InstanceReady,
    InstanceStopped,
    MetricsSnapshot,
    ModelRemoved,
    SloUnderload,
    SloViolation,
)

from migserve_scaler.core import lifecycle, removal, replicas
from migserve_scaler.core.demand import on_demand
from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.lifecycle import on_step_result, reports_on
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.resize import on_violation
from migserve_scaler.core.shrink import on_snapshot, on_underload
from migserve_scaler.core.view import ClusterView, Memory

__all__ = ["on_event", "on_tick"]


def on_event(
    view: ClusterView,
    memory: Memory,
    event: Event,
    now: float,
    *,
    policy: Policy,
    ids: IdSource,
) -> Outcome:
    """What to do about one event. Events that only change the view (model.registered,
    node.inventory, instance.starting ...) decide nothing here. A
    ``model.removed`` retires the model's instances (``removal``). An
    ``instance.failed`` that no plan in flight waits for is a lost instance:
    it is replaced (``replicas``)."""
    if isinstance(event, Demand):
        return on_demand(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, SloViolation):
        return on_violation(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, SloUnderload):
        return on_underload(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, ModelRemoved):
        return removal.on_model_removed(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, MetricsSnapshot):
        return on_snapshot(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, InstanceFailed):
        memory = memory.with_failed(event.instance_id, now)
        if not reports_on(view, event):  # failed outside a plan: replace it
            return replicas.on_instance_lost(view, memory, event, now, policy=policy, ids=ids)
        return on_step_result(view, memory, event, now, policy=policy)
    if isinstance(event, CommandDone | CommandFailed | InstanceReady | InstanceStopped):
        return on_step_result(view, memory, event, now, policy=policy)
    return Outcome(memory)


def on_tick(
    view: ClusterView,
    memory: Memory,
    now: float,
    *,
    policy: Policy,
    ids: IdSource | None = None,
) -> Outcome:
    """What time alone decides: timeouts and resends of plans in flight; with
    ``ids``, also replacing lost instances and reaching ``min_replicas``
    (``replicas.on_tick``: plans need fresh ids)."""
    out = lifecycle.on_tick(view, memory, now, policy=policy)
    kept = out.memory.forget_failed_before(now - policy.settle_s - policy.plan_timeout_s)
    out = Outcome(kept, out.effects, out.notes)
    if ids is None:
        return out
    out = out.then(removal.on_tick(view, out.memory, now, policy=policy, ids=ids))
    return out.then(replicas.on_tick(view, out.memory, now, policy=policy, ids=ids))
