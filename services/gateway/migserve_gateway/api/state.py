"""The typed state the app's lifespan yields, and how a route reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from starlette.requests import Request

from migserve_gateway.adapters.jobs import JobClient
from migserve_gateway.adapters.registry import ModelRegistry
from migserve_gateway.core.chat import RequestLimits
from migserve_gateway.core.view import LiveView
from migserve_gateway.dispatch import Dispatcher
from migserve_gateway.metrics import GatewayMetrics
from migserve_gateway.settings import GatewaySettings

#: request.scope keys set by the middleware and the routes
SCOPE_CONTEXT = "migserve.context"
SCOPE_MODEL = "migserve.model"
SCOPE_CALLER = "migserve.caller"


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: GatewaySettings
    limits: RequestLimits
    jobs: JobClient
    registry: ModelRegistry
    view: LiveView
    dispatcher: Dispatcher
    metrics: GatewayMetrics


class LifespanState(TypedDict):
    gateway: GatewayState


def gateway_state(request: Request) -> GatewayState:
    """The app's state, as the lifespan yielded it."""
    state: GatewayState = request.state.gateway
    return state
