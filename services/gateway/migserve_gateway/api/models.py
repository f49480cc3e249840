"""GET /v1/models: the registered models in OpenAI's list format."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.state import gateway_state
from migserve_gateway.core.render import model_list_body

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    body = model_list_body(gateway_state(request).view.models())
    return Response(body, media_type="application/json")
