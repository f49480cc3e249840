"""``migserve-sim-engine``: run a SIMULATED inference server on one port.

Prints ``{"event": "listening", "host": H, "port": P}`` on stdout once it
accepts connections (with ``--port 0`` the port is picked by the OS). SIGTERM
and SIGINT stop it gracefully (exit status 0): it stops accepting, finishes
open requests (at most 30 s), then exits; a second signal stops it at once.

Fault injection (tests and chaos runs): ``--fail-start`` makes it exit with
status 1 when its loading time ends (a crash at start, after it listened);
``--never-healthy`` keeps it "loading" (/health 503) forever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

import uvicorn

from migserve_agent.sim_engine.config import SimEngineConfig
from migserve_agent.sim_engine.perf import MigProfile, check_slices, parse_profile
from migserve_agent.sim_engine.server import create_app

log = logging.getLogger("migserve_agent.sim_engine")

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migserve-sim-engine",
        description=(
            "A SIMULATED LLM inference server (TGI and OpenAI routes, TGI metrics). It runs no "
            "model: it emits lorem-ipsum tokens paced by the performance model of a MIG slice."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    add("--model", default="migserve/sim-llm", help="model id to report (default: %(default)s)")
    add("--profile", default="7g.40gb", help="MIG profile, e.g. 3g.20gb (default: %(default)s)")
    add("--compute-slices", type=int, help="override the profile's compute slices (1-7)")
    add("--memory-slices", type=int, help="override the profile's memory slices (1-8)")
    add("--slots", type=int, default=8, help="concurrent requests (default: %(default)s)")
    add("--max-queue", type=int, help="queued requests beyond which to answer 429")
    add("--startup-delay", type=float, default=0.0, help="seconds of 503 'loading' at start")
    add("--speed-factor", type=float, default=1.0, help="TPOT multiplier, > 1 is slower")
    add("--alpha-ms", type=float, help="override alpha (ms per token at N=1)")
    add("--beta-ms", type=float, help="override beta (ms per token per concurrent request)")
    add("--prefill-ms-per-token", type=float, help="override prefill time per prompt token")
    add("--weights-scale", type=float, default=1.0, help="model weights relative to 7B")
    add("--max-context", type=int, default=4096, help="context length (default: %(default)s)")
    add("--default-max-tokens", type=int, default=64, help="max tokens if none requested")
    add("--seed", type=int, default=0, help="seed for requests that bring none")
    add("--fail-start", action="store_true",
        help="FAULT: exit with status 1 when loading ends (a crash at start)")  # fmt: skip
    add("--never-healthy", action="store_true",
        help="FAULT: stay loading forever (/health answers 503)")  # fmt: skip
    add("--log-level", default="info", choices=_LOG_LEVELS, help="(default: %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> SimEngineConfig:
    """Settings from parsed arguments; ValueError names the bad value."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    profile = parse_profile(args.profile)
    if args.compute_slices is not None or args.memory_slices is not None:
        compute = profile.compute_slices if args.compute_slices is None else args.compute_slices
        memory = profile.memory_slices if args.memory_slices is None else args.memory_slices
        check_slices(compute, memory)
        profile = MigProfile(name=args.profile, compute_slices=compute, memory_slices=memory)
    return SimEngineConfig(
        model_id=args.model,
        profile=profile,
        slots=args.slots,
        max_queue=args.max_queue,
        startup_delay_s=args.startup_delay,
        speed_factor=args.speed_factor,
        alpha_ms=args.alpha_ms,
        beta_ms=args.beta_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        weights_scale=args.weights_scale,
        max_context=args.max_context,
        default_max_tokens=args.default_max_tokens,
        seed=args.seed,
        fail_start=args.fail_start,
        never_healthy=args.never_healthy,
    )


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: serve() installs its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _on_signal(server: uvicorn.Server, sig: signal.Signals) -> None:
    log.info("%s: shutting down after open requests finish", sig.name)
    if server.should_exit:
        server.force_exit = True  # a second signal: stop now
    server.should_exit = True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto is TCP, and Nagle would add ~40 ms to each keep-alive request/response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(config: SimEngineConfig, *, host: str, port: int, log_level: str) -> int:
    """Serve until SIGTERM/SIGINT; announce the port on stdout once listening.

    Returns the exit status: 0, or 1 for the injected crash of ``fail_start``."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(
            create_app(config),
            log_level=log_level,
            access_log=False,
            ws="none",
            lifespan="off",
            timeout_graceful_shutdown=30,
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server, sig)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(json.dumps({"event": "listening", "host": host, "port": bound_port}), flush=True)
            log.info(
                "sim engine for %s on %s (%d slots) listening on %s:%d",
                config.model_id,
                config.profile.name,
                config.slots,
                host,
                bound_port,
            )
        if config.fail_start and server.started:
            await asyncio.wait({task}, timeout=config.startup_delay_s)
            if not task.done():
                log.error("injected fault (--fail-start): crashing while loading")
                server.should_exit = server.force_exit = True
                await task
                return 1
        await task
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # ProfileError included
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        status = asyncio.run(
            serve(config, host=args.host, port=args.port, log_level=args.log_level)
        )
    except OSError as exc:
        message = f"migserve-sim-engine: cannot listen on {args.host}:{args.port}: {exc}"
        print(message, file=sys.stderr)
        sys.exit(1)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
