"""Run every policy on one trace and compare them.

Policies: ``whole-gpu``, ``static`` (hindsight), ``hpa``, ``ours`` (see
``baselines``, ``hindsight`` and ``ours``). GPU-hours of all runs are counted
up to one common horizon, the latest end among them. Savings of ours are
``1 - ours / other`` in GPU-hours, stated with whether ours reached the
target token attainment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from migserve_shared.errors import ConfigError
from migserve_watcher.core.slo import policy_with_headroom

from migserve_cli.sim.baselines import HpaController, StaticController, whole_gpu_layout
from migserve_cli.sim.config import SimConfig, SimModel
from migserve_cli.sim.hindsight import Choice, choose, pack
from migserve_cli.sim.metrics import Attainment, PolicyResult, set_horizon, summarize
from migserve_cli.sim.ours import ScalerController
from migserve_cli.sim.simulator import Controller, Simulator
from migserve_cli.sim.traces import Trace

POLICIES = ("whole-gpu", "static", "hpa", "ours")


@dataclass(frozen=True, slots=True)
class Saving:
    """Ours against another policy, in GPU-hours."""

    against: str
    saving: float
    ours_meets_target: bool
    other_meets_target: bool


@dataclass(slots=True)
class Comparison:
    results: list[PolicyResult]
    runs: dict[str, Simulator]
    horizon_s: float
    static_choices: list[Choice] = field(default_factory=list)
    savings: list[Saving] = field(default_factory=list)
    wall_s: float = 0.0


def parse_policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise ConfigError(f"--policies: unknown {bad or text!r}; choose from {', '.join(POLICIES)}")
    return list(dict.fromkeys(names))


def _run(
    config: SimConfig, models: Sequence[SimModel], trace: Trace, controller: Controller
) -> tuple[PolicyResult, Simulator]:
    began = time.perf_counter()
    sim = Simulator(config=config, models=models, trace=trace, controller=controller)
    sim.run()
    result = summarize(sim, wall_s=time.perf_counter() - began)
    if isinstance(controller, ScalerController):
        result.decisions = dict(controller.log.decisions)
        result.scale_failures = dict(controller.log.failures)
        result.slo_events = dict(controller.log.slo_events)
    return result, sim


def _controller(
    name: str, config: SimConfig, models: Sequence[SimModel], trace: Trace, cmp: Comparison
) -> Controller | str:
    """The controller for a policy, or why it cannot run."""
    gpu = config.mig_model
    if name == "whole-gpu":
        try:
            layout = whole_gpu_layout(
                [m.model_id for m in models],
                gpu,
                replicas=config.whole_gpu_replicas,
                gpus=config.gpus,
            )
        except ConfigError as exc:
            return str(exc)
        return StaticController("whole-gpu", layout, mig=False)
    if name == "static":
        cmp.static_choices = choose(config, models, trace)
        layout, missing = pack(cmp.static_choices, gpu, config.gpus)
        if missing:
            return f"the hindsight partition does not fit on {config.gpus} GPUs: {missing}"
        return StaticController("static", layout)
    if name == "hpa":
        return HpaController(target_in_flight=config.hpa_target_in_flight)
    return ScalerController(slo_policy=policy_with_headroom(config.slo_headroom))


def compare(
    config: SimConfig, models: Sequence[SimModel], trace: Trace, policies: Sequence[str]
) -> Comparison:
    began = time.perf_counter()
    cmp = Comparison(results=[], runs={}, horizon_s=0.0)
    skipped: list[PolicyResult] = []
    for name in policies:
        picked = _controller(name, config, models, trace, cmp)
        if isinstance(picked, str):
            empty = PolicyResult(policy=name, attainment=_nothing(), models=[], notes=[picked])
            skipped.append(empty)
            continue
        result, sim = _run(config, models, trace, picked)
        cmp.results.append(result)
        cmp.runs[name] = sim
    cmp.horizon_s = max((r.end_s for r in cmp.results), default=0.0)
    for result in cmp.results:
        set_horizon(result, cmp.runs[result.policy], cmp.horizon_s)
    for choice in cmp.static_choices:
        if not choice.meets:
            note = (
                f"static: no allocation of {choice.model} reached the target; took "
                f"{choice.replicas} x {choice.profile} ({choice.token_attainment:.2%})"
            )
            for r in cmp.results:
                if r.policy == "static":
                    r.notes.append(note)
    cmp.results.extend(skipped)
    cmp.savings = savings(cmp.results, config.target_attainment)
    cmp.wall_s = time.perf_counter() - began
    return cmp


def savings(results: Sequence[PolicyResult], target: float) -> list[Saving]:
    by_name = {r.policy: r for r in results if not r.notes or r.gpu_hours > 0}
    ours = by_name.get("ours")
    if ours is None:
        return []
    out: list[Saving] = []
    for other in ("whole-gpu", "static", "hpa"):
        res = by_name.get(other)
        if res is None or res.gpu_hours <= 0:
            continue
        out.append(
            Saving(
                against=other,
                saving=1.0 - ours.gpu_hours / res.gpu_hours,
                ours_meets_target=ours.attainment.token_attainment >= target,
                other_meets_target=res.attainment.token_attainment >= target,
            )
        )
    return out


def _nothing() -> Attainment:
    return Attainment(
        requests=0,
        completed=0,
        failed=0,
        output_tokens=0,
        token_attainment=0.0,
        request_attainment=0.0,
        tpot_p50_ms=None,
        tpot_p99_ms=None,
        ttft_p50_s=None,
        ttft_p99_s=None,
    )
