"""The scaler's pure decision core (no asyncio, NATS or HTTP imports).

Entry points: ``on_event`` and ``on_tick`` take the cluster view, the soft
memory, the input and ``now`` and return an ``Outcome``: effects to run in
order (write a plan with compare-and-set, send a command, publish an event)
and the memory after them.

Modules: ``demand`` (first instance), ``resize`` (SLO violation: step up or
scale out), ``shrink`` (underload: scale in or step down; scale to zero),
``ladder`` (profile steps), ``routes`` (where a slice comes from: free room,
moves from ``defrag``, or break before make), ``swapcost`` (is a swap worth
it), ``idle``, ``execute`` and ``lifecycle`` (plans step by step, timeouts,
retries), ``rollback`` (undo steps), ``losses`` and ``replicas`` (instances
lost outside a plan are replaced; ``min_replicas`` is kept on the tick),
``cluster`` (reservations), ``placement``.
"""

from __future__ import annotations

from migserve_scaler.core.decide import on_event, on_tick
from migserve_scaler.core.effects import (
    Effect,
    IdSource,
    Outcome,
    PublishEvent,
    PutPlan,
    SendCommand,
)
from migserve_scaler.core.placement import (
    NoCapacity,
    Placement,
    Reservation,
    choose_placement,
)
from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import ClusterView, Memory, PlanEntry

__all__ = [
    "ClusterView",
    "Effect",
    "IdSource",
    "Memory",
    "NoCapacity",
    "Outcome",
    "Placement",
    "PlanEntry",
    "Policy",
    "PublishEvent",
    "PutPlan",
    "Reservation",
    "SendCommand",
    "choose_placement",
    "on_event",
    "on_tick",
]
