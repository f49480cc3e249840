"""Scale to zero: a model with no load at all for ``idle_to_zero_s`` loses every replica.

Idleness comes from the watcher's evidence: ``slo.underload`` (repeated while a
model stays underloaded; what the scaler service consumes) and
``metrics.snapshot`` (every window, where it is fed, as in the simulator).
Idle means nothing in flight, nothing waiting, no requests arriving, no tokens
made. The first idle window marks the model idle since that window began; any
window with load, a violation or demand clears it. Only models whose spec
allows it (``min_replicas`` 0, ``idle_to_zero_s`` above 0) are scaled to zero;
demand brings them back as for a new model.
"""

from __future__ import annotations

from migserve_shared.messages import ModelSpec, SloEvidence

from migserve_scaler.core.view import ClusterView, Memory


def is_idle(evidence: SloEvidence) -> bool:
    return (
        evidence.in_flight == 0
        and evidence.waiting == 0
        and evidence.request_rate <= 0
        and evidence.tokens == 0
    )


def track(memory: Memory, model_id: str, evidence: SloEvidence, at: float) -> Memory:
    """Fold one window's evidence into when the model became idle."""
    if not evidence.instances:
        return memory  # nothing runs: the window says nothing about load
    if not is_idle(evidence):
        return memory.with_idle(model_id, None)
    since = memory.idle_since.get(model_id, at - evidence.window_s)
    return memory.with_idle(model_id, since)


def zero_due(view: ClusterView, memory: Memory, spec: ModelSpec, now: float) -> bool:
    """Whether the model should lose every replica now."""
    if spec.idle_to_zero_s <= 0 or spec.min_replicas > 0:
        return False
    since = memory.idle_since.get(spec.model_id)
    if since is None or now - since < spec.idle_to_zero_s:
        return False
    return bool(view.live_instances(spec.model_id))
