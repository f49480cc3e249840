"""``migserve sim``: replay a trace against every policy and compare them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from migserve_shared.errors import ConfigError

from migserve_cli.sim.config import (
    DEFAULT_GPU_MODEL,
    SimConfig,
    default_models,
    load_models_file,
    with_idle_to_zero,
)
from migserve_cli.sim.report import as_json, render, setup_of
from migserve_cli.sim.runner import POLICIES, compare, parse_policies
from migserve_cli.sim.traces import load_trace

DESCRIPTION = """\
Replay a request trace (Azure CSV or Mooncake JSONL) in simulated time against
four policies: whole GPU per model, the best static MIG partition (chosen with
hindsight), replica-only autoscaling on whole GPUs (HPA-like), and ours (the
real scaler decision core and watcher SLO state machine, vertical and
horizontal on MIG). Instances follow the sim engine's performance model and the
engines' slot counts. Defaults: the trace spread round-robin over four models
on eight A100-40GB GPUs, vLLM-like 60 s engine start, 2 s slice create, 1 s
destroy.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate policies on a request trace (GPU-hours, SLO attainment)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trace", required=True, type=Path, help="Azure .csv or Mooncake .jsonl")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--models",
        default="4",
        help="a number of default models (default 4) or a YAML models file "
        "(ModelSpec fields plus weights_scale)",
    )
    p.add_argument("--slo-ms", type=float, default=None, help="one TPOT SLO for every model")
    p.add_argument(
        "--idle-to-zero-s",
        type=float,
        default=None,
        help="scale every model to zero after this many idle seconds (ModelSpec.idle_to_zero_s; "
        "default: the models' own, 0 = never for the default models)",
    )
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the cluster (default 8)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: all on one node")
    p.add_argument("--gpu-model", default=DEFAULT_GPU_MODEL, help="default %(default)s")
    p.add_argument("--engine-start-s", type=float, default=60.0, help="default 60 (vLLM-like)")
    p.add_argument("--warm-start", action="store_true", help="engine start 1 s")
    p.add_argument("--slice-create-s", type=float, default=2.0)
    p.add_argument("--slice-destroy-s", type=float, default=1.0)
    p.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--plots", type=Path, default=None, help="write PNG plots to this directory")
    p.add_argument("--duration-s", type=float, default=None, help="only the trace's first S s")
    p.add_argument("--speedup", type=float, default=1.0, help="divide arrival times by this")
    p.add_argument(
        "--target",
        type=float,
        default=0.99,
        help="token-level SLO attainment a static partition must reach (default 0.99)",
    )
    p.add_argument(
        "--headroom",
        type=float,
        default=0.9,
        help="ours: the watcher's MIGSERVE_WATCHER_SLO_HEADROOM, a window is a violation above "
        "SLO x this (default 0.9)",
    )
    p.add_argument("--whole-gpu-replicas", type=int, default=1)
    p.add_argument(
        "--hpa-target",
        type=float,
        default=0.0,
        help="HPA: in-flight requests per replica (default: half a whole GPU's slots)",
    )
    p.add_argument("--queue-timeout-s", type=float, default=120.0)
    p.set_defaults(func=cmd_sim)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        gpus=args.gpus,
        gpus_per_node=args.gpus_per_node or args.gpus,
        gpu_model=args.gpu_model,
        slice_create_s=args.slice_create_s,
        slice_destroy_s=args.slice_destroy_s,
        engine_start_s=1.0 if args.warm_start else args.engine_start_s,
        queue_timeout_s=args.queue_timeout_s,
        target_attainment=args.target,
        slo_headroom=args.headroom,
        whole_gpu_replicas=args.whole_gpu_replicas,
        hpa_target_in_flight=args.hpa_target,
    )


def cmd_sim(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.models.isdigit():
        models = default_models(int(args.models), slo_ms=args.slo_ms)
    else:
        models = load_models_file(Path(args.models), slo_ms=args.slo_ms)
    if args.slo_ms is not None and not args.slo_ms > 0:
        raise ConfigError(f"--slo-ms must be > 0, got {args.slo_ms}")
    if args.idle_to_zero_s is not None:
        if not args.idle_to_zero_s >= 0:
            raise ConfigError(f"--idle-to-zero-s must be >= 0, got {args.idle_to_zero_s}")
        models = [with_idle_to_zero(m, args.idle_to_zero_s) for m in models]
    policies = parse_policies(args.policies)
    trace = load_trace(
        args.trace, models=len(models), duration_s=args.duration_s, speedup=args.speedup
    )
    cmp = compare(config, models, trace, policies)
    setup = setup_of(config, models, trace)
    if args.json:
        sys.stdout.buffer.write(as_json(setup, cmp) + b"\n")
    else:
        print(render(setup, cmp), flush=True)
    if args.plots is not None:
        from migserve_cli.sim.plots import write_plots

        paths = write_plots(cmp, args.plots)
        print(f"plots: {', '.join(str(p) for p in paths)}", file=sys.stderr, flush=True)
    return 0
