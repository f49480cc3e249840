"""Instances lost outside a plan: noticed from the view and from ``instance.failed``.

The scaler remembers, per model, the live (starting or ready) instances it
saw last (``Memory.seen``). When one of them is no longer live, it is *lost*
unless a plan retires it (any plan in the view has a retire step for it: a
scale in, a swap, a move, a rollback) or its record says it is draining or
stopped (a retirement in progress) without a failure having been reported.
A record in state ``failed``, or gone altogether, is a loss. An
``instance.failed`` event about an instance the scaler never saw live but a
plan created (it failed moments after becoming ready) is a loss too.

Losses wait in ``Memory.lost`` until ``replicas.replace_next`` starts a plan
for them, one at a time per model. A plan that replaces a loss says so in its
reason (``replace failed instance <id>: ...``), so a loss is never queued
twice even when the memory that dropped it was not kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from migserve_shared.messages import InstanceFailed, InstanceRecord

from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import LIVE_INSTANCE, ClusterView, Lost, Memory

#: the start of the reason of every plan that replaces a lost instance
REPLACE_REASON = "replace failed instance"

#: record states of an instance being retired (not a loss unless it failed)
_RETIRING_STATES = frozenset({"draining", "stopped"})


def replace_reason(instance_id: str) -> str:
    """The prefix of the reason of the plan that replaces ``instance_id``."""
    return f"{REPLACE_REASON} {instance_id}:"


def replacing(view: ClusterView, model_id: str, instance_id: str) -> bool:
    """Whether the model's plan (in flight or finished) replaces ``instance_id``."""
    entry = view.plans.get(model_id)
    return entry is not None and entry.plan.reason.startswith(replace_reason(instance_id))


def retired_ids(view: ClusterView) -> set[str]:
    """Instances some plan in the view retires, retired or tried to retire."""
    return {s.instance_id for e in view.plans.values() for s in e.plan.steps if s.op == "retire"}


def _created_by_plan(view: ClusterView, instance_id: str) -> bool:
    return any(
        s.op == "create" and s.status == "done" and s.instance_id == instance_id
        for e in view.plans.values()
        for s in e.plan.steps
    )


def live_by_model(view: ClusterView) -> dict[str, dict[str, InstanceRecord]]:
    """Live instances by model id, then instance id (one pass over the instances)."""
    out: dict[str, dict[str, InstanceRecord]] = {}
    for rec in view.instances.values():
        if rec.state in LIVE_INSTANCE:
            out.setdefault(rec.model_id, {})[rec.instance_id] = rec
    return out


def _is_lost(view: ClusterView, memory: Memory, instance_id: str, retiring: set[str]) -> bool:
    if instance_id in retiring:
        return False
    rec = view.instances.get(instance_id)
    return not (
        rec is not None and rec.state in _RETIRING_STATES and instance_id not in memory.failed
    )


def notice(
    view: ClusterView,
    memory: Memory,
    model_id: str,
    now: float,
    *,
    live: Mapping[str, InstanceRecord] | None = None,
    retiring: set[str] | None = None,
    failure: InstanceFailed | None = None,
) -> Memory:
    """Compare the model's live instances with those seen last; queue the losses.

    ``live`` and ``retiring`` may be passed when computed once for many models."""
    if model_id not in view.models:
        return memory.with_seen(model_id, None).with_lost(model_id, ())
    if live is None:
        live = {r.instance_id: r for r in view.live_instances(model_id)}
    if retiring is None:
        retiring = retired_ids(view)
    before = memory.seen.get(model_id, {})
    lost: list[Lost] = []
    for instance_id, rec in before.items():
        if instance_id not in live and _is_lost(view, memory, instance_id, retiring):
            trace = failure.trace_id if failure and failure.instance_id == instance_id else ""
            lost.append(
                Lost(instance_id=instance_id, model_id=model_id, profile=rec.profile,
                     trace_id=trace or rec.trace_id, since=now)
            )  # fmt: skip
    if (
        failure is not None
        and failure.model_id == model_id
        and failure.instance_id not in before
        and failure.instance_id not in live
        and failure.instance_id not in retiring
        and _created_by_plan(view, failure.instance_id)
    ):
        lost.append(
            Lost(instance_id=failure.instance_id, model_id=model_id, profile=failure.profile,
                 trace_id=failure.trace_id, since=now)
        )  # fmt: skip
    memory = memory.with_seen(model_id, live)
    if not lost:
        return memory
    queued = memory.lost.get(model_id, ())
    known = {q.instance_id for q in queued}
    new = tuple(
        x
        for x in lost
        if x.instance_id not in known and not replacing(view, model_id, x.instance_id)
    )
    return memory.with_lost(model_id, queued + new)


def recently_done(
    view: ClusterView, memory: Memory, model_id: str, now: float, policy: Policy
) -> bool:
    """A plan finished moments ago whose new instance may not be in the view yet
    (and is not known to have failed since)."""
    entry = view.plans.get(model_id)
    if entry is None or entry.plan.status != "done" or now - entry.plan.updated > policy.settle_s:
        return False
    created = {
        s.instance_id
        for s in entry.plan.steps
        if s.op == "create" and s.status != "failed" and not s.model_id
    }
    return bool(created) and not any(i in view.instances or i in memory.failed for i in created)
