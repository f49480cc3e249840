"""The inference routes, served without FastAPI's per-request layers.

Between the gateway's own middlewares and an endpoint, FastAPI runs its
error, telemetry and body-limit middlewares, the exception middleware, an
exit stack, the router's scan and the dependency solver: about 0.2 ms per
request on the way to the first token on a 2-core machine, a tenth of the
gateway path's budget (bench/gateway_overhead.py). The inference endpoints
take nothing but the ``Request`` and fail only with ``ApiError``, so they
need none of it.

``FastRoutes`` is the innermost of the gateway's middlewares (inside the
request context and auth): it answers POST on the hot paths by calling the
endpoint of the FastAPI route registered there, with the same error answers
(``api.errors``), and hands every other request to FastAPI. The routes stay
registered with FastAPI, so the OpenAPI document still lists them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from migserve_gateway.api.errors import answer_error, unexpected_error
from migserve_gateway.core.errors import ApiError
from migserve_gateway.metrics import GatewayMetrics

#: the POST routes on the request path (chat, completions, TGI)
HOT_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream", "/"}
)

Endpoint = Callable[[Request], Awaitable[Response]]


def hot_routes(routes: Iterable[Any]) -> dict[str, APIRoute]:
    """path -> the FastAPI route that serves POST on it, for the hot paths."""
    return {
        r.path: r
        for r in routes
        if isinstance(r, APIRoute) and r.path in HOT_PATHS and "POST" in (r.methods or ())
    }


class FastRoutes:
    """Serves POST on ``routes`` by calling their endpoints; passes the rest to ``app``."""

    def __init__(
        self, app: ASGIApp, *, routes: dict[str, APIRoute], metrics: GatewayMetrics
    ) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # the route label of the request metrics
        endpoint: Endpoint = route.endpoint
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except ApiError as err:
            response = answer_error("POST", scope["path"], err, self.metrics)
        except Exception:
            response = unexpected_error("POST", scope["path"])
        await response(scope, receive, send)
