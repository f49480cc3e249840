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
)

from migserve_scaler.core.demand import on_demand
from migserve_scaler.core.effects import IdSource, Outcome
from migserve_scaler.core.lifecycle import on_step_result, on_tick
from migserve_scaler.core.policy import Policy
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
    """What to do about one event. Events that only change the view (model.*,
    node.inventory, instance.starting ...) decide nothing here."""
    if isinstance(event, Demand):
        return on_demand(view, memory, event, now, policy=policy, ids=ids)
    if isinstance(event, CommandDone | CommandFailed | InstanceReady | InstanceFailed):
        return on_step_result(view, memory, event, now)
    return Outcome(memory)
