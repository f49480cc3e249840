"""Per-request context: ids in, X-Request-ID out, the request counted.

A pure ASGI middleware (cheaper than BaseHTTPMiddleware): it reads
``traceparent`` and ``X-Request-ID`` once, stores the ``RequestContext`` in
the scope for the routes, puts the ids on every log line of the request,
echoes ``X-Request-ID`` on the response and counts
``migserve_gateway_requests_total{route,model,status}`` when it ends.
"""

from __future__ import annotations

from migserve_shared.logs import log_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from migserve_gateway.api.state import SCOPE_CONTEXT, SCOPE_MODEL
from migserve_gateway.core.tracing import request_context
from migserve_gateway.metrics import GatewayMetrics

UNMATCHED = "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        traceparent = request_id = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
        ctx = request_context(traceparent, request_id)
        scope[SCOPE_CONTEXT] = ctx
        request_id_header = (b"x-request-id", ctx.request_id.encode("latin-1"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), request_id_header]}
            await send(message)

        try:
            with log_context(trace_id=ctx.trace_id, request_id=ctx.request_id):
                await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            self.metrics.requests.labels(
                route=route, model=scope.get(SCOPE_MODEL, ""), status=str(status)
            ).inc()
