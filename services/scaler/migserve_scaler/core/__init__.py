"""The scaler's pure decision core (no asyncio, NATS or HTTP imports).

Entry points: ``on_event`` and ``on_tick`` take the cluster view, the soft
memory, the input and ``now`` and return an ``Outcome``: effects to run in
order (write a plan with compare-and-set, send a command, publish an event)
and the memory after them.
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
