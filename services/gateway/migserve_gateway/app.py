"""The app factory: routers, error handlers, middleware, and a lifespan with typed state.

``create_app`` takes an already-built :class:`Backend` (NATS in production,
a test double in unit tests); the lifespan wires the request path on top of
it and yields it as ``{"gateway": GatewayState}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from migserve_gateway.adapters.backend import Backend
from migserve_gateway.api import admin, chat, completions, models, ops, tgi
from migserve_gateway.api.auth import AuthMiddleware
from migserve_gateway.api.errors import install_error_handlers
from migserve_gateway.api.fastpath import FastRoutes, hot_routes
from migserve_gateway.api.middleware import RequestContextMiddleware
from migserve_gateway.api.state import GatewayState, LifespanState
from migserve_gateway.core.auth import AuthKeys
from migserve_gateway.dispatch import Dispatcher, DispatchTimeouts
from migserve_gateway.metrics import GatewayMetrics
from migserve_gateway.settings import GatewaySettings


def build_state(
    settings: GatewaySettings, backend: Backend, metrics: GatewayMetrics
) -> GatewayState:
    timeouts = DispatchTimeouts(
        cold_start_s=settings.cold_start_timeout_s,
        queue_s=settings.queue_timeout_s,
        token_idle_s=settings.token_idle_timeout_s,
        demand_interval_s=settings.demand_interval_s,
    )
    return GatewayState(
        settings=settings,
        limits=settings.limits,
        jobs=backend.jobs,
        registry=backend.registry,
        view=backend.view,
        dispatcher=Dispatcher(
            jobs=backend.jobs,
            view=backend.view,
            timeouts=timeouts,
            metrics=metrics,
            admission=settings.admission,
            holds=settings.holds,
            rates=settings.rates,
        ),
        metrics=metrics,
    )


def create_app(
    settings: GatewaySettings,
    backend: Backend,
    *,
    metrics: GatewayMetrics | None = None,
    auth: AuthKeys | None = None,
) -> FastAPI:
    """The gateway's ASGI app over ``backend``.

    ``auth``: the keys loaded at start; without it only ``settings.auth_disabled``
    lets requests through (no keys: every protected route answers 401).
    """
    metrics = metrics or GatewayMetrics()
    if auth is None:
        auth = AuthKeys.off() if settings.auth_disabled else AuthKeys()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[LifespanState]:
        yield {"gateway": build_state(settings, backend, metrics)}

    app = FastAPI(
        title="migserve gateway",
        summary="OpenAI-compatible inference on MIG slices, and the model registry",
        lifespan=lifespan,
    )
    routers = [module.router for module in (chat, completions, tgi, models, admin, ops)]
    for router in routers:
        app.include_router(router)
    install_error_handlers(app, metrics)
    hot = hot_routes(route for router in routers for route in router.routes)
    app.add_middleware(FastRoutes, routes=hot, metrics=metrics)  # innermost
    app.add_middleware(AuthMiddleware, keys=auth, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # outermost
    return app
