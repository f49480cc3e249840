"""The best static MIG partition for a trace, chosen with hindsight.

MIG isolates slices, so a model's service on its slices does not depend on
the other models: each model is searched alone. Its candidates are every
profile that holds it times 1..max_replicas replicas, cheapest first (total
compute slices, then memory slices); each is simulated on the model's share
of the trace with the slices running from time 0, and the first that reaches
the target token attainment with no failed request wins. When none does, the
candidate with the highest attainment is taken (and said so).

The chosen slices are packed onto the cluster's GPUs largest first, each at
the first (GPU, start) the MIG rules allow, which is then the ``static``
policy's layout. A partition that does not fit is reported, not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migserve_shared import mig

from migserve_cli.sim.baselines import SlicePlacement, StaticController
from migserve_cli.sim.config import SimConfig, SimModel, fitting_profiles
from migserve_cli.sim.metrics import attainment
from migserve_cli.sim.simulator import Simulator
from migserve_cli.sim.traces import Trace, TraceRequest


@dataclass(frozen=True, slots=True)
class Choice:
    """One model's static allocation and how it did alone."""

    model: str
    profile: str
    replicas: int
    token_attainment: float
    failed: int
    meets: bool
    tried: int


def _alone(trace: Trace, index: int) -> Trace:
    """The requests of model ``index`` only, renumbered as model 0."""
    mine = tuple(
        TraceRequest(r.arrival_s, r.prompt_tokens, r.output_tokens, 0)
        for r in trace.requests
        if r.model == index
    )
    return Trace(trace.source, trace.format, mine)


def evaluate(
    config: SimConfig, model: SimModel, trace: Trace, profile: mig.Profile, replicas: int
) -> tuple[float, int]:
    """(token attainment, failed requests) of ``replicas`` static slices of ``profile``."""
    alone = SimConfig(
        gpus=replicas,
        gpus_per_node=replicas,
        gpu_model=config.gpu_model,
        queue_timeout_s=config.queue_timeout_s,
        watch_interval_s=3600.0,
        tick_s=config.tick_s,
    )
    layout = [
        SlicePlacement(model.model_id, r, profile.name, profile.starts[0]) for r in range(replicas)
    ]
    sim = Simulator(
        config=alone,
        models=[model],
        trace=trace,
        controller=StaticController("probe", layout),
        record_windows=False,
    )
    sim.run()
    result = attainment(sim.requests, {model.model_id: model.slo_ms})
    return result.token_attainment, result.failed


def choose(config: SimConfig, models: Sequence[SimModel], trace: Trace) -> list[Choice]:
    """The cheapest static allocation per model that meets the target (see the module doc)."""
    gpu = config.mig_model
    out: list[Choice] = []
    for index, model in enumerate(models):
        alone = _alone(trace, index)
        candidates = sorted(
            (
                (p.compute_slices * r, p.memory_slices * r, p.name, r)
                for p in fitting_profiles(model, gpu)
                for r in range(1, max(1, model.spec.max_replicas) + 1)
            ),
        )
        best: Choice | None = None
        tried = 0
        for _, _, name, replicas in candidates:
            tried += 1
            score, failed = evaluate(config, model, alone, gpu.profile(name), replicas)
            meets = score >= config.target_attainment and failed == 0
            choice = Choice(model.model_id, name, replicas, score, failed, meets, tried)
            if meets:
                best = choice
                break
            if best is None or (failed, -score) < (best.failed, -best.token_attainment):
                best = choice
        if best is None:
            raise ValueError(f"model {model.model_id} fits no profile of {gpu.name}")
        out.append(
            Choice(
                best.model,
                best.profile,
                best.replicas,
                best.token_attainment,
                best.failed,
                best.meets,
                tried,
            )
        )
    return out


def pack(
    choices: Sequence[Choice], gpu: mig.GpuModel, gpus: int
) -> tuple[list[SlicePlacement], list[str]]:
    """Place the chosen slices, largest first, first fit; (layout, slices that did not fit)."""
    wanted = sorted(
        ((gpu.profile(c.profile), c.model) for c in choices for _ in range(c.replicas)),
        key=lambda pm: (-pm[0].memory_slices, -pm[0].compute_slices, pm[1]),
    )
    layouts: list[list[mig.Slice]] = [[] for _ in range(gpus)]
    placed: list[SlicePlacement] = []
    missing: list[str] = []
    for profile, model in wanted:
        for g in range(gpus):
            starts = mig.free_starts(gpu, layouts[g], profile)
            if starts:
                layouts[g].append(mig.Slice(profile.id, starts[0]))
                placed.append(SlicePlacement(model, g, profile.name, starts[0]))
                break
        else:
            missing.append(f"{model} on {profile.name}")
    return placed, missing
