"""What a run achieved and what it cost, per policy and per model.

- token attainment: output tokens produced while the instance's TPOT(N) was
  within the model's SLO, over all output tokens of all requests (a failed
  request's missing tokens count as missed; a first token counts as within);
- request attainment: requests that completed with a mean TPOT within the SLO,
  over all requests;
- GPU-hours: a GPU counts while any slice exists on it; slice-hours weight
  each slice by its share of the GPU's compute (c / 7); both up to a common
  horizon (the latest end of all policies' runs) so idle tails count alike;
- reconfigurations: MIG slices created or destroyed after time 0; cold starts:
  engines started after time 0;
- TPOT percentiles over completed requests' mean TPOT (multi-token ones), TTFT
  percentiles over requests that got a first token (waiting included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from migserve_cli.sim.instance import SimRequest
from migserve_cli.sim.simulator import Simulator


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None when empty."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attainment:
    requests: int
    completed: int
    failed: int
    output_tokens: int
    token_attainment: float
    request_attainment: float
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None


def attainment(requests: Sequence[SimRequest], slo_ms: dict[str, float]) -> Attainment:
    tokens = sum(r.output_tokens for r in requests)
    good = sum(r.good_tokens for r in requests)
    ok = 0
    tpots: list[float] = []
    ttfts: list[float] = []
    completed = failed = 0
    for r in requests:
        if r.first_token is not None:
            ttfts.append(r.first_token - r.arrival)
        if r.failed:
            failed += 1
            continue
        if r.finished is None:
            continue
        completed += 1
        if r.tpot_s is None:
            ok += 1
            continue
        tpots.append(r.tpot_s * 1000.0)
        if r.tpot_s * 1000.0 <= slo_ms[r.model] + 1e-9:
            ok += 1
    n = len(requests)
    return Attainment(
        requests=n,
        completed=completed,
        failed=failed,
        output_tokens=tokens,
        token_attainment=good / tokens if tokens else 1.0,
        request_attainment=ok / n if n else 1.0,
        tpot_p50_ms=percentile(tpots, 50),
        tpot_p99_ms=percentile(tpots, 99),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResult:
    model: str
    slo_ms: float
    attainment: Attainment
    #: profiles its instances used, with how many instances each
    profiles: dict[str, int]


@dataclass(slots=True, kw_only=True)
class PolicyResult:
    policy: str
    attainment: Attainment
    models: list[ModelResult]
    gpu_hours: float = 0.0
    slice_hours: float = 0.0
    peak_gpus: int = 0
    reconfigurations: int = 0
    cold_starts: int = 0
    instances_created: int = 0
    instances_retired: int = 0
    drain_kills: int = 0
    end_s: float = 0.0
    wall_s: float = 0.0
    decisions: dict[str, int] = field(default_factory=dict)
    scale_failures: dict[str, int] = field(default_factory=dict)
    slo_events: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarize(sim: Simulator, *, wall_s: float) -> PolicyResult:
    """The result of a finished run (usage is filled in by ``set_horizon``)."""
    slo = {m: model.slo_ms for m, model in sim.models.items()}
    per_model: list[ModelResult] = []
    for model_id in sim.models:
        reqs = [r for r in sim.requests if r.model == model_id]
        profiles: dict[str, int] = {}
        for rec in sim.cluster.history:
            if rec.model == model_id:
                profiles[rec.profile.name] = profiles.get(rec.profile.name, 0) + 1
        per_model.append(
            ModelResult(
                model=model_id,
                slo_ms=slo[model_id],
                attainment=attainment(reqs, slo),
                profiles=profiles,
            )
        )
    stats = sim.agent.stats
    return PolicyResult(
        policy=sim.controller.name,
        attainment=attainment(sim.requests, slo),
        models=per_model,
        peak_gpus=sim.cluster.peak_gpus(),
        reconfigurations=stats.reconfigurations,
        cold_starts=stats.cold_starts,
        instances_created=stats.creates,
        instances_retired=stats.retires,
        drain_kills=stats.drain_kills,
        end_s=sim.end,
        wall_s=wall_s,
    )


def set_horizon(result: PolicyResult, sim: Simulator, horizon_s: float) -> None:
    result.gpu_hours, result.slice_hours = sim.cluster.usage(horizon_s)
