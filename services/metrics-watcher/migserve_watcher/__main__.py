"""``migserve-watcher``: turn engine and bridge metrics into per-model TPOT snapshots
and SLO events (slo.violation, slo.recovered, slo.underload).

Signals set a stop event; an exit stack owns the NATS connection (drained on
the way out), the HTTP client and the metrics server; a task group runs the
polling loop.
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

import httpx
from migserve_shared.bus import connect, drain_quietly
from migserve_shared.errors import ConfigError
from migserve_shared.logs import configure_logging
from prometheus_client import start_http_server

from migserve_watcher.app import Watcher
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import ENV_HELP, WatcherSettings, settings_from_env

log = logging.getLogger("migserve_watcher")


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="migserve-watcher",
        description=(
            "The migserve metrics watcher: every interval, gets each model's TPOT and load "
            "(scraping every ready instance's engine and bridge /metrics, or querying "
            "Prometheus), publishes a metrics.snapshot event per model, and slo.violation, "
            "slo.recovered and slo.underload events with their evidence. Configured by "
            "environment variables."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def run(settings: WatcherSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = WatcherMetrics()
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            server, _ = start_http_server(
                settings.metrics_port, settings.metrics_host, registry=metrics.registry
            )
            stack.callback(server.shutdown)
        http = await stack.enter_async_context(httpx.AsyncClient())
        nc = await connect(settings.nats)
        stack.push_async_callback(drain_quietly, nc)
        log.info(
            "watcher starting: every %g s over %g s windows, source %s",
            settings.interval_s,
            settings.window_s,
            settings.metrics_source,
        )
        watcher = Watcher(settings=settings, nc=nc, http=http, metrics=metrics)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watcher.run(stop), name="watcher-poll")
        log.info("watcher stopped")


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"migserve-watcher: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("metrics-watcher", level=settings.log_level, json_lines=settings.log_json)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
