"""The comparison as a text table or as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from migserve_cli.sim.config import SimConfig, SimModel, slots_for
from migserve_cli.sim.metrics import PolicyResult
from migserve_cli.sim.runner import Comparison
from migserve_cli.sim.traces import Trace


@dataclass(frozen=True, slots=True)
class Setup:
    """What was simulated, stated in every output."""

    trace: str
    trace_format: str
    requests: int
    span_s: float
    spread: str
    models: list[dict[str, Any]]
    gpus: int
    gpus_per_node: int
    gpu_model: str
    slice_create_s: float
    slice_destroy_s: float
    engine_start_s: float
    watch_interval_s: float
    watch_window_s: float
    target_attainment: float


def setup_of(config: SimConfig, models: Sequence[SimModel], trace: Trace) -> Setup:
    gpu = config.mig_model
    return Setup(
        trace=trace.source,
        trace_format=trace.format,
        requests=len(trace.requests),
        span_s=round(trace.duration_s, 3),
        spread=f"round-robin: request i goes to model i mod {len(models)}",
        models=[
            {
                "model_id": m.model_id,
                "engine": m.spec.engine,
                "memory_mb": m.spec.memory_mb,
                "tpot_slo_ms": m.slo_ms,
                "weights_scale": m.weights_scale,
                "max_replicas": m.spec.max_replicas,
                "scaling": m.spec.scaling,
                "idle_to_zero_s": m.spec.idle_to_zero_s,
                "slots_per_7g": slots_for(m, gpu.by_size()[-1]),
            }
            for m in models
        ],
        gpus=config.gpus,
        gpus_per_node=config.gpus_per_node,
        gpu_model=gpu.name,
        slice_create_s=config.slice_create_s,
        slice_destroy_s=config.slice_destroy_s,
        engine_start_s=config.engine_start_s,
        watch_interval_s=config.watch_interval_s,
        watch_window_s=config.watch_window_s,
        target_attainment=config.target_attainment,
    )


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(r: PolicyResult) -> list[str]:
    a = r.attainment
    if not a.requests:
        return [r.policy, *["-"] * 12]
    return [
        r.policy,
        f"{a.token_attainment:.2%}",
        f"{a.request_attainment:.2%}",
        str(a.failed),
        f"{r.gpu_hours:.2f}",
        f"{r.slice_hours:.2f}",
        str(r.peak_gpus),
        str(r.reconfigurations),
        str(r.cold_starts),
        f"{_f(a.tpot_p50_ms, '.1f')}/{_f(a.tpot_p99_ms, '.1f')}",
        f"{_f(a.ttft_p50_s, '.2f')}/{_f(a.ttft_p99_s, '.2f')}",
        f"{r.end_s:.0f}",
        f"{r.wall_s:.2f}",
    ]


_HEAD = [
    "policy",
    "token SLO",
    "req SLO",
    "failed",
    "GPU-h",
    "slice-h",
    "peak GPUs",
    "reconfig",
    "cold starts",
    "TPOT p50/p99 ms",
    "TTFT p50/p99 s",
    "end s",
    "wall s",
]


def table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render(setup: Setup, cmp: Comparison) -> str:
    out = [
        f"trace: {setup.trace} ({setup.trace_format}), {setup.requests} requests over "
        f"{setup.span_s:.0f} s; {setup.spread}",
        f"cluster: {setup.gpus} x {setup.gpu_model} ({setup.gpus_per_node} per node); "
        f"slice create {setup.slice_create_s:g} s, destroy {setup.slice_destroy_s:g} s, "
        f"engine start {setup.engine_start_s:g} s; watcher window {setup.watch_window_s:g} s "
        f"every {setup.watch_interval_s:g} s",
        "models:",
    ]
    for m in setup.models:
        out.append(
            f"  {m['model_id']}: {m['memory_mb']} MB, TPOT SLO {m['tpot_slo_ms']:g} ms, "
            f"weights x{m['weights_scale']:g} of 7B, engine {m['engine']} "
            f"({m['slots_per_7g']} slots on a whole GPU), max {m['max_replicas']} replicas, "
            f"{m['scaling']} first"
            + (f", to zero after {m['idle_to_zero_s']:g} s idle" if m["idle_to_zero_s"] else "")
        )
    out += ["", table([_row(r) for r in cmp.results], _HEAD), ""]
    for r in cmp.results:
        if not r.models:
            out.append(f"{r.policy}: not run: {'; '.join(r.notes)}")
            continue
        parts = [
            f"{m.model.split('/')[-1]} {m.attainment.token_attainment:.1%} on "
            + ",".join(f"{n}x{p}" for p, n in sorted(m.profiles.items()))
            for m in r.models
        ]
        out.append(f"{r.policy}: " + "; ".join(parts))
        if r.decisions or r.slo_events:
            out.append(
                f"  decisions {r.decisions}; slo events {r.slo_events}; "
                f"scale failures {r.scale_failures or '{}'}"
            )
        out += [f"  note: {n}" for n in r.notes]
    if cmp.static_choices:
        chosen = ", ".join(
            f"{c.model.split('/')[-1]} {c.replicas}x{c.profile}" for c in cmp.static_choices
        )
        out.append(f"static partition (hindsight): {chosen}")
    out.append("")
    for s in cmp.savings:
        tag = "meets" if s.ours_meets_target else "MISSES"
        out.append(
            f"GPU-hours saved by ours vs {s.against}: {s.saving:+.1%} (ours {tag} the "
            f"{setup.target_attainment:.0%} token-SLO target; {s.against} "
            f"{'meets' if s.other_meets_target else 'misses'} it)"
        )
    out.append(f"simulated all policies in {cmp.wall_s:.2f} s")
    return "\n".join(out)


def as_json(setup: Setup, cmp: Comparison) -> bytes:
    doc = {
        "setup": setup,
        "policies": cmp.results,
        "static_partition": cmp.static_choices,
        "savings": cmp.savings,
        "horizon_s": cmp.horizon_s,
        "wall_s": cmp.wall_s,
    }
    return msgspec.json.encode(doc)
