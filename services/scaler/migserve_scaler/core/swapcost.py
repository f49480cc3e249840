"""Is a swap worth it? Its expected cost against how long the load is expected to last.

A swap's cost is the time from sending a create step to its instance being
ready (slice creation plus engine start), learned per (engine, profile) as a
moving average in ``Memory.swap_cost`` (``execute.step_done`` measures it);
until measured it is ``Policy.default_swap_cost_s``. The load a violation
answers is expected to last as long again as it was observed (the violation's
windows times their length) times ``Policy.load_duration_factor``. A plan that
makes several slices (moves first) costs the sum.
"""

from __future__ import annotations

from collections.abc import Iterable

from migserve_shared.messages import PlanStep, SloEvidence

from migserve_scaler.core.policy import Policy
from migserve_scaler.core.view import ClusterView, Memory


def swap_cost(memory: Memory, engine: str, profile: str, policy: Policy) -> float:
    """Expected seconds until a new instance of ``engine`` on ``profile`` is ready."""
    return memory.swap_cost.get((engine, profile), policy.default_swap_cost_s)


def plan_cost(
    view: ClusterView, memory: Memory, model_id: str, steps: Iterable[PlanStep], policy: Policy
) -> float:
    """Expected seconds until the last slice a plan creates is ready."""
    total = 0.0
    for step in steps:
        if step.op != "create":
            continue
        spec = view.models.get(step.model_id or model_id)
        engine = spec.engine if spec is not None else "sim"
        total += swap_cost(memory, engine, step.profile, policy)
    return total


def expected_load_s(evidence: SloEvidence, policy: Policy) -> float | None:
    """How long the load behind a violation is expected to go on (None: unknown)."""
    observed = evidence.windows * evidence.window_s
    if observed <= 0:
        return None
    return observed * policy.load_duration_factor


def too_slow(cost_s: float, evidence: SloEvidence, policy: Policy) -> str | None:
    """Why a swap of ``cost_s`` is not worth starting, or None when it is."""
    load_s = expected_load_s(evidence, policy)
    if load_s is None or cost_s <= load_s:
        return None
    return (
        f"the swap is expected to take {cost_s:.1f} s but the load it answers is expected to "
        f"last {load_s:.1f} s ({evidence.windows} windows of {evidence.window_s:g} s x "
        f"{policy.load_duration_factor:g})"
    )
