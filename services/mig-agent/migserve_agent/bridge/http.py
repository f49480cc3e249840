"""The bridge's tiny HTTP server: ``GET /metrics`` (Prometheus) and ``GET /health``.

It runs in the bridge's event loop (uvicorn, no signal handling of its own)
on a socket bound here, so ``--metrics-port 0`` yields the real port before
the bridge announces itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from migserve_agent.bridge.metrics import CONTENT_TYPE, BridgeMetrics


def create_app(*, metrics: BridgeMetrics, health: Callable[[], dict[str, Any]]) -> Starlette:
    """``/metrics`` renders the bridge's registry; ``/health`` answers 200 with its state."""

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def health_route(request: Request) -> Response:
        return JSONResponse(health())

    return Starlette(
        routes=[
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/health", health_route, methods=["GET"]),
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the bridge's ``__main__`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """Binds at construction (OSError if the port is taken); ``serve`` runs until ``stop``."""

    def __init__(self, app: Starlette, *, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._server = _Server(
            uvicorn.Config(
                app,
                log_config=None,  # keep the process's logging (JSON lines on stderr)
                log_level="warning",
                access_log=False,
                lifespan="off",
                ws="none",
            )
        )

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    async def wait_started(self, task: asyncio.Task[None]) -> None:
        """Return once it accepts connections; raise if ``task`` (serving it) ended."""
        while not self._server.started:
            if task.done():
                task.result()
                raise RuntimeError("the metrics server stopped before it started")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True

    def close(self) -> None:
        """Release the socket (also when ``serve`` never ran)."""
        self._sock.close()
