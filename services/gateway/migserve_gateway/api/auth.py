"""Bearer-key auth as a pure ASGI middleware, before any body is read.

``/v1/admin/...`` needs the admin key; ``/health`` and ``/metrics`` are open;
every other route needs an inference key (the admin key works there too).
The caller's key id goes into the scope for the per-key limits.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from migserve_gateway.api.errors import TGI_PATHS, error_response
from migserve_gateway.api.state import SCOPE_CALLER
from migserve_gateway.core.auth import AuthKeys, authorize
from migserve_gateway.core.errors import ApiError
from migserve_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics"})
ADMIN_PREFIX = "/v1/admin"


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys: AuthKeys, metrics: GatewayMetrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        admin = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        try:
            scope[SCOPE_CALLER] = authorize(self.keys, _authorization(scope), admin=admin)
        except ApiError as err:
            self.metrics.bad_requests.labels(reason=err.reason).inc()
            log.info("%s %s -> %d: %s", scope["method"], path, err.status, err.message)
            await error_response(err, tgi=path in TGI_PATHS)(scope, receive, send)
            return
        await self.app(scope, receive, send)
