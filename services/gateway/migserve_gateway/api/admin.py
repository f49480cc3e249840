"""The model registry API under /v1/admin/models.

- ``POST /v1/admin/models`` (body: a ModelSpec) -> 201 with the stored spec
  (200 when ``?replace=true`` replaced one), 409 if it exists, 400 if invalid;
- ``GET /v1/admin/models`` -> every spec; ``GET /v1/admin/models/{id}`` -> one;
- ``DELETE /v1/admin/models/{id}`` -> 204, or 404.

Model ids contain '/', so the id is the rest of the path.
"""

from __future__ import annotations

import logging

import msgspec
from fastapi import APIRouter
from migserve_shared.messages import now
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.adapters.registry import ModelExistsError, RegistryUnavailableError
from migserve_gateway.api.body import read_json_body
from migserve_gateway.api.state import SCOPE_CONTEXT, gateway_state
from migserve_gateway.core.errors import UNAVAILABLE, ApiError
from migserve_gateway.core.registry import parse_model_spec
from migserve_gateway.core.render import spec_body, specs_body
from migserve_gateway.core.tracing import RequestContext

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin/models")

JSON = "application/json"


def _unavailable(exc: RegistryUnavailableError) -> ApiError:
    log.error("%s", exc)
    return ApiError(
        503, f"the model registry is unavailable: {exc}", reason="registry", type=UNAVAILABLE
    )


def _not_found(model_id: str) -> ApiError:
    return ApiError(
        404, f"model {model_id!r} is not registered", reason="unknown_model", code="model_not_found"
    )


@router.post("")
async def register_model(request: Request, replace: bool = False) -> Response:
    gw = gateway_state(request)
    spec = parse_model_spec(await read_json_body(request, gw.settings.max_body_bytes))
    spec = msgspec.structs.replace(spec, registered_at=now())
    ctx: RequestContext = request.scope[SCOPE_CONTEXT]
    try:
        created = await gw.registry.register(spec, replace=replace, trace_id=ctx.trace_id)
    except ModelExistsError as exc:
        raise ApiError(409, str(exc), reason="model_exists", code="model_exists") from exc
    except RegistryUnavailableError as exc:
        raise _unavailable(exc) from exc
    log.info("model %s %s", spec.model_id, "registered" if created else "replaced")
    return Response(spec_body(spec), status_code=201 if created else 200, media_type=JSON)


@router.get("")
async def list_registered(request: Request) -> Response:
    try:
        specs = await gateway_state(request).registry.list()
    except RegistryUnavailableError as exc:
        raise _unavailable(exc) from exc
    return Response(specs_body(specs), media_type=JSON)


@router.get("/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Response:
    if not model_id:
        raise _not_found(model_id)
    try:
        spec = await gateway_state(request).registry.get(model_id)
    except RegistryUnavailableError as exc:
        raise _unavailable(exc) from exc
    if spec is None:
        raise _not_found(model_id)
    return Response(spec_body(spec), media_type=JSON)


@router.delete("/{model_id:path}", status_code=204)
async def remove_model(request: Request, model_id: str) -> Response:
    ctx: RequestContext = request.scope[SCOPE_CONTEXT]
    if not model_id:
        raise _not_found(model_id)
    try:
        removed = await gateway_state(request).registry.remove(model_id, trace_id=ctx.trace_id)
    except RegistryUnavailableError as exc:
        raise _unavailable(exc) from exc
    if not removed:
        raise _not_found(model_id)
    log.info("model %s removed", model_id)
    return Response(status_code=204)
