"""Run the gateway: NATS backend, uvicorn, the view watchers, until told to stop.

``run_gateway`` is what ``__main__`` runs and what the integration tests run
in process: an exit stack owns NATS (drained on the way out), a task group
runs the named loops (the HTTP server and the KV watchers), and setting
``stop`` shuts it down gracefully (in-flight requests get
``shutdown_grace_s`` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack

import uvicorn
from migserve_shared.errors import ConfigError

from migserve_gateway.adapters.backend import open_nats_backend
from migserve_gateway.adapters.keyfiles import load_auth_keys
from migserve_gateway.app import create_app
from migserve_gateway.metrics import GatewayMetrics
from migserve_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

OnListening = Callable[[int], None]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (``__main__`` owns the signals)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The listening socket (port 0: a free one); ConfigError names the address.

    ``reuse_port`` sets SO_REUSEPORT: gateways on one host share the port, the
    kernel spreads new connections over them, and one that stops (closing its
    listener first) leaves the others accepting.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on MIGSERVE_GATEWAY_HOST={host!r} MIGSERVE_GATEWAY_PORT={port}: {exc}"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on MIGSERVE_GATEWAY_HOST={host!r} MIGSERVE_GATEWAY_PORT={port}: {exc}"
        ) from exc
    sock.set_inheritable(True)
    return sock


async def run_gateway(
    settings: GatewaySettings, stop: asyncio.Event, *, on_listening: OnListening
) -> None:
    """Serve until ``stop`` is set; ``on_listening(port)`` once requests are accepted."""
    metrics = GatewayMetrics()
    auth = load_auth_keys(
        settings.api_keys_file, settings.admin_key_file, disabled=settings.auth_disabled
    )
    sock = bind(settings.host, settings.port, reuse_port=settings.reuse_port)
    port = int(sock.getsockname()[1])
    async with AsyncExitStack() as stack:
        stack.callback(sock.close)
        opening = asyncio.create_task(open_nats_backend(settings, metrics, stack), name="connect")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait((opening, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not opening.done():
            log.info("stopped before NATS at %s answered", settings.nats.url)
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            return
        backend = opening.result()
        app = create_app(settings, backend, metrics=metrics, auth=auth)
        config = uvicorn.Config(
            app,
            lifespan="on",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        )
        server = _Server(config, on_started=lambda: on_listening(port))
        async with asyncio.TaskGroup() as tg:
            loops = [tg.create_task(fn(), name=name) for name, fn in backend.loops]
            http = tg.create_task(server.serve(sockets=[sock]), name="http")
            stopping = tg.create_task(stop.wait(), name="stop")
            await asyncio.wait((http, stopping), return_when=asyncio.FIRST_COMPLETED)
            log.info("gateway stopping")
            server.should_exit = True
            await http
            for task in (*loops, stopping):
                task.cancel()
    log.info("gateway stopped")
