"""``migserve-bridge`` / ``python -m migserve_agent.bridge``: run one engine's bridge.

Prints ``{"event": "listening", "metrics_port": P}`` on stdout once it takes
jobs. SIGTERM or SIGINT drains (no new jobs, the ones in hand finish within
``--drain-timeout-s``) and exits 0; a second signal cuts the jobs off at once.
Exit status 2: bad flags or environment; 1: it could not start (NATS, port).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from migserve_shared.errors import ConfigError
from migserve_shared.logs import configure_logging

from migserve_agent.bridge.app import Bridge
from migserve_agent.bridge.settings import BridgeSettings, settings_from_args

log = logging.getLogger("migserve_agent.bridge")


def _announce(port: int) -> None:
    print(json.dumps({"event": "listening", "metrics_port": port}), flush=True)


async def serve(settings: BridgeSettings) -> None:
    """Run the bridge until SIGTERM/SIGINT, then drain."""
    bridge = Bridge(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            bridge.abort_now()
            return
        log.info("%s: draining", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await bridge.run(stop, on_ready=_announce)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (uvicorn[standard] brings it), else asyncio's.

    Every token passes through this loop twice (engine read, NATS write).
    """
    try:
        import uvloop  # optional: imported where it is chosen
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = settings_from_args(argv, os.environ)
    except ConfigError as exc:
        print(f"migserve-bridge: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("migserve-bridge", level=settings.log_level, json_lines=settings.log_json)
    try:
        with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
            runner.run(serve(settings))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
    except Exception as exc:
        log.exception("bridge failed: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
