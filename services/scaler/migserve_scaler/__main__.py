"""``migserve-scaler``: decide which model runs on which MIG slice of which GPU.

Run two or more for availability: one leads (``leader.py``), the others wait.
Signals set a stop event (the leader then releases its lease); an exit stack
owns the NATS connection (drained on the way out) and the metrics server; the
scaler's task group runs its loops.
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

from migserve_scaler.app import Scaler
from migserve_scaler.metrics import ScalerMetrics
from migserve_scaler.settings import ENV_HELP, ScalerSettings, settings_from_env

log = logging.getLogger("migserve_scaler")


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="migserve-scaler",
        description=(
            "The migserve scaler: turns demand and lifecycle events into plans (kept in the "
            "plans KV bucket) and commands to node agents. Configured by environment variables."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def run(settings: ScalerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ScalerMetrics()
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            server, _ = start_http_server(
                settings.metrics_port, settings.metrics_host, registry=metrics.registry
            )
            stack.callback(server.shutdown)
        nc = await connect(settings.nats)
        stack.push_async_callback(drain_quietly, nc)
        log.info(
            "scaler %s starting (NATS %s, lease ttl %g s)",
            settings.scaler_id,
            settings.nats.url,
            settings.lease_ttl_s,
        )
        scaler = Scaler(settings=settings, nc=nc, metrics=metrics)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(scaler.run(stop), name="scaler")
        log.info("scaler %s stopped", settings.scaler_id)


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"migserve-scaler: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("scaler", level=settings.log_level, json_lines=settings.log_json)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
