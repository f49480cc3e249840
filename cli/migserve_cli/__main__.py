"""The migserve command line: the local stack, its status, and its event trace."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import msgspec
from migserve_agent.gpu import inspect as gpu_inspect
from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError, MigserveError
from migserve_shared.messages import EVENT_KINDS

from migserve_cli import loadgen
from migserve_cli import stack as local_stack
from migserve_cli.model_file import DEFAULT_MODEL_FILE, load_models
from migserve_cli.sim.cli import add_parser as add_sim_parser
from migserve_cli.status import as_json, read_cluster, render
from migserve_cli.trace import follow

ENGINES = ("sim", "llamacpp", "tgi", "vllm")


def _say(line: str) -> None:
    print(line, flush=True)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home) if args.home else local_stack.default_home()


def cmd_up(args: argparse.Namespace) -> int:
    models = load_models(Path(args.models), engine=args.engine)
    opts = local_stack.StackOptions(
        home=_home(args),
        engine=args.engine,
        models=models,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_model=args.gpu_model,
        gateway_port=args.gateway_port,
        gateways=args.gateways,
        sim_engine_startup_s=args.sim_startup,
        ready_timeout_s=args.ready_timeout,
        metrics_source=args.metrics_source,
        scalers=args.scalers,
        nats_auth=not args.no_nats_auth,
    )
    try:
        stack = local_stack.up(opts, _say)
    except MigserveError:
        _say("start failed; stopping what was started")
        local_stack.down(opts.home, _say)
        raise
    _say("")
    _say(f"migserve is up.  gateway: {stack.gateway_url}   nats: {stack.nats_url}")
    _say(
        "Simulated: MIG slices are bookkeeping on simulated A100s (no GPU here); the engines "
        "run for real on the CPU."
    )
    _say(
        f"Try: curl -s {stack.gateway_url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"model":"{models[0].model_id}","messages":[{{"role":"user",'
        '"content":"What is a GPU?"}]}\''
    )
    if args.detach:
        _say("Detached. `migserve status`, `migserve trace`, `migserve down`.")
        return 0
    _say("Following events (Ctrl-C stops the stack) ...")
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(follow(local_stack.nats_settings(stack), _say), name="trace")
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    local_stack.down(opts.home, _say)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    report = local_stack.down(_home(args), _say)
    return 1 if report.leftover_processes else 0


def _stack_urls(args: argparse.Namespace) -> tuple[NatsSettings, str]:
    """NATS (with the stack's admin credentials, or MIGSERVE_NATS_* with --nats-url)."""
    if args.nats_url:
        env = Env({**os.environ, "MIGSERVE_NATS_URL": args.nats_url})
        return nats_settings(env, "migserve-cli"), args.gateway_url or ""
    stack = local_stack.read_stack(_home(args))
    if stack is None:
        raise ConfigError(f"no local stack in {_home(args)}; pass --nats-url or run `migserve up`")
    return local_stack.nats_settings(stack), stack.gateway_url


def cmd_status(args: argparse.Namespace) -> int:
    nats_url, gateway_url = _stack_urls(args)
    view = asyncio.run(read_cluster(nats_url, gateway_url))
    stack = None if args.nats_url else local_stack.read_stack(_home(args))
    if stack is not None:
        source = stack.metrics_source
        if stack.prometheus_url:
            source = f"{source} ({stack.prometheus_url})"
        view = msgspec.structs.replace(view, metrics_source=source)
    if args.json:
        sys.stdout.buffer.write(as_json(view) + b"\n")
    else:
        _say(render(view))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    nats_url, _ = _stack_urls(args)
    follow_s = 0.5 if args.no_follow else args.seconds
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            follow(
                nats_url,
                _say,
                trace_id=args.trace_id,
                kinds=args.kind or None,
                from_start=not args.new,
                follow_s=follow_s,
                skip_snapshots=not args.snapshots,
            )
        )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    url = args.url
    if not url:
        stack = local_stack.read_stack(_home(args))
        if stack is None:
            raise ConfigError(f"no local stack in {_home(args)}; pass --url or run `migserve up`")
        url = stack.gateway_url
    _say(f"load: {args.concurrency} clients for {args.duration:g} s against {url} ({args.model})")
    report = asyncio.run(
        loadgen.run_load(
            url,
            args.model,
            concurrency=args.concurrency,
            duration_s=args.duration,
            max_tokens=args.max_tokens,
            stream=not args.no_stream,
            api_key=args.api_key,
            timeout_s=args.timeout,
            retry_connect=args.retry,
        )
    )
    _say(loadgen.format_report(report))
    return 1 if report.failed else 0


def cmd_gpu_inspect(args: argparse.Namespace) -> int:
    reports = gpu_inspect.inspect_node(index=args.index)
    if args.json:
        sys.stdout.buffer.write(gpu_inspect.to_json(reports) + b"\n")
    else:
        _say(gpu_inspect.render_text(reports))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="migserve", description=__doc__)
    p.add_argument("--home", help="local stack directory (default $MIGSERVE_HOME or ~/.migserve)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack (nats, services, simulated GPU nodes)")
    up.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="engine for every model (default: as in the model file; models/default.yaml "
        "says llamacpp, the real SmolLM2; sim ignores the model source)",
    )
    up.add_argument(
        "--models",
        default=str(DEFAULT_MODEL_FILE),
        help="YAML file of models to register (default: %(default)s)",
    )
    up.add_argument("--nodes", type=int, default=2, help="simulated GPU nodes (default 2)")
    up.add_argument("--gpus-per-node", type=int, default=1)
    up.add_argument(
        "--gpu-model",
        default="A100-SXM4-40GB",
        help="simulated GPU model: A100-SXM4-40GB, A100-80GB, H100-80GB, H200-141GB",
    )
    up.add_argument("--gateway-port", type=int, default=8080, help="0 picks a free port")
    up.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes sharing the port with SO_REUSEPORT (default 1); with 2 or more "
        "one can restart while the others serve",
    )
    up.add_argument(
        "--sim-startup",
        type=float,
        default=0.5,
        help="seconds the sim engine pretends to load (default 0.5)",
    )
    up.add_argument("--ready-timeout", type=float, default=60.0)
    up.add_argument(
        "--scalers",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="scaler replicas (default 1); one leads through the KV lease, the others take "
        "over when it stops",
    )
    up.add_argument(
        "--metrics-source",
        choices=("auto", "direct", "prometheus"),
        default="auto",
        help="auto: Prometheus when a `prometheus` binary is on PATH, else direct scraping",
    )
    up.add_argument(
        "--detach", action="store_true", help="return once the gateway answers; print the URLs"
    )
    up.add_argument(
        "--no-nats-auth",
        action="store_true",
        help="run NATS without users and permissions (default: one NATS user per service, "
        "random passwords in the stack home; docs/security.md)",
    )
    up.set_defaults(func=cmd_up)

    gpu = sub.add_parser("gpu", help="this machine's NVIDIA GPUs, read through NVML")
    gpu_sub = gpu.add_subparsers(dest="gpu_command", required=True)
    inspect = gpu_sub.add_parser(
        "inspect",
        help="show MIG mode, GPU instance profiles (memory, SMs), possible placements and "
        "existing GPU/compute instances; read-only, changes nothing",
        description=gpu_inspect.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("--json", action="store_true", help="machine-readable")
    inspect.add_argument("--index", type=int, default=None, help="only this GPU (NVML index)")
    inspect.set_defaults(func=cmd_gpu_inspect)

    load = sub.add_parser(
        "load",
        help="send chat completions at a fixed concurrency and print a summary table",
        description=loadgen.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("--model", required=True, help="model id to call")
    load.add_argument("--url", help="gateway URL (default: the local stack's)")
    load.add_argument("--concurrency", type=int, default=4, help="clients (default 4)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    load.add_argument("--max-tokens", type=int, default=32)
    load.add_argument("--no-stream", action="store_true", help="whole answers, not SSE")
    load.add_argument("--api-key", default=None, help="bearer key (when auth is on)")
    load.add_argument("--timeout", type=float, default=60.0, help="seconds without a byte")
    load.add_argument(
        "--retry",
        action="store_true",
        help="retry once when the connection fails before any byte (counted apart)",
    )
    load.set_defaults(func=cmd_load)

    add_sim_parser(sub)

    down = sub.add_parser("down", help="stop everything `up` started; leave no process or slice")
    down.set_defaults(func=cmd_down)

    for name, helptext, func in (
        ("status", "show nodes, GPU layouts, instances and models", cmd_status),
        ("trace", "print the event stream readably", cmd_trace),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument(
            "--nats-url",
            help="NATS URL (default: the local stack's, as its admin user); credentials from "
            "MIGSERVE_NATS_USER and MIGSERVE_NATS_PASSWORD_FILE",
        )
        sp.add_argument("--gateway-url", help=argparse.SUPPRESS)
        sp.set_defaults(func=func)
        if name == "status":
            sp.add_argument("--json", action="store_true", help="machine-readable, with URLs")
        else:
            sp.add_argument(
                "trace_id", nargs="?", help="only events of this trace (a prefix works)"
            )
            sp.add_argument(
                "--kind",
                action="append",
                choices=EVENT_KINDS,
                help="only events of this kind (repeatable)",
            )
            sp.add_argument("--new", action="store_true", help="only events from now on")
            sp.add_argument("--no-follow", action="store_true", help="print what is there and exit")
            sp.add_argument("--seconds", type=float, default=None, help="follow for this long")
            sp.add_argument(
                "--snapshots", action="store_true", help="include metrics.snapshot events"
            )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MigserveError as exc:
        print(f"migserve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
