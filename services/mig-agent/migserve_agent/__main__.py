"""``migserve-agent`` (also ``python -m migserve_agent``): the node agent.

Configured by environment variables only (``--help`` lists them). SIGTERM or
SIGINT: stop consuming commands, finish the ones in hand, drain NATS, exit;
engines keep running and the next agent adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from migserve_shared.bus import connect, drain_quietly
from migserve_shared.errors import ConfigError
from migserve_shared.logs import configure_logging
from prometheus_client import start_http_server

from migserve_agent import settings as settings_module
from migserve_agent.agent import Agent, build_gpu_backend, open_runtime
from migserve_agent.gpu.base import GpuBackend
from migserve_agent.gpu.mig_mode import GpuUnusableError, require_mig_enabled
from migserve_agent.metrics import AgentMetrics
from migserve_agent.runtime import pod_settings
from migserve_agent.settings import AgentSettings, settings_from_env

log = logging.getLogger("migserve_agent")


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="migserve-agent",
        description=(
            "migserve node agent: executes CreateInstance/RetireInstance commands for one "
            "node (MIG slices + engine instances), reconciles after restarts, and publishes "
            "the node's inventory. Configured by environment variables:"
        ),
        epilog=f"{settings_module.__doc__}\n{pod_settings.__doc__}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def serve(settings: AgentSettings, *, backend: GpuBackend | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT.

    The GPUs come first: without NVML, or with a GPU whose MIG mode is off,
    the agent refuses to start (GpuUnusableError) before it touches NATS.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = AgentMetrics()
    async with contextlib.AsyncExitStack() as stack:
        gpus = backend or build_gpu_backend(settings)
        stack.callback(gpus.close)
        require_mig_enabled(await asyncio.to_thread(gpus.list_gpus))
        if settings.metrics_port is not None:
            server, _ = start_http_server(
                settings.metrics_port, addr=settings.metrics_addr, registry=metrics.registry
            )
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
        nc = await connect(settings.nats)
        stack.push_async_callback(drain_quietly, nc)
        runtime = await open_runtime(settings, stack)
        agent = Agent(settings, nc=nc, metrics=metrics, runtime=runtime, backend=gpus)
        stack.callback(agent.close)
        await agent.run(stop)


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"migserve-agent: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("mig-agent", level=settings.log_level, json_lines=settings.log_json)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        sys.exit(2)
    except GpuUnusableError as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(3)


if __name__ == "__main__":
    main()
