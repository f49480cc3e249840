"""GET /health and GET /metrics (served at /metrics itself, no redirect)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from migserve_gateway.api.state import gateway_state
from migserve_gateway.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    if gateway_state(request).jobs.connected:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "reason": "not connected to NATS"}, 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(gateway_state(request).metrics.render(), media_type=CONTENT_TYPE)
