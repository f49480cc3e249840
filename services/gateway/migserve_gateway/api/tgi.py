"""Text Generation Inference's API: POST /generate, /generate_stream, / and GET /info.

So Hugging Face's ``text-generation`` client works unchanged. TGI serves one
model and its requests name none: the model is MIGSERVE_TGI_MODEL, or the
only registered model. Errors on these routes take TGI's shape
(``{"error", "error_type"}``, see ``api.errors``).
"""

from __future__ import annotations

import time

import msgspec
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.body import read_json_body
from migserve_gateway.api.serve import Collected, serve_call
from migserve_gateway.api.state import GatewayState, gateway_state
from migserve_gateway.core.completion import parse_tgi_request
from migserve_gateway.core.errors import ApiError
from migserve_gateway.core.render_text import TgiStreamRenderer, tgi_generated
from migserve_gateway.dispatch import JobRun

router = APIRouter()

JSON = "application/json"


def tgi_model(gw: GatewayState) -> str:
    """The model TGI requests go to; ApiError(400) when it is ambiguous."""
    if gw.settings.tgi_model:
        return gw.settings.tgi_model
    models = gw.view.models()
    if len(models) == 1:
        return models[0].model_id
    raise ApiError(
        400,
        f"{len(models)} models are registered and MIGSERVE_TGI_MODEL is not set; "
        "the TGI API serves exactly one model",
        reason="tgi_model",
        code="model_not_found",
    )


async def _generate(request: Request, *, stream: bool | None, as_list: bool = False) -> Response:
    started = time.perf_counter()
    gw = gateway_state(request)
    body = await read_json_body(request, gw.settings.max_body_bytes)
    tgi = parse_tgi_request(body, tgi_model(gw), gw.limits)
    seed = tgi.call.params.seed

    def stream_with(_run: JobRun) -> TgiStreamRenderer:
        return TgiStreamRenderer(seed=seed)

    def collect_with(_run: JobRun, done: Collected) -> Response:
        finish = done.end.finish_reason
        out = tgi_generated(done.texts, finish, seed=seed, details=tgi.details, as_list=as_list)
        return Response(out, media_type=JSON)

    return await serve_call(
        request,
        tgi.call,
        started=started,
        stream=tgi.stream if stream is None else stream,
        stream_with=stream_with,
        collect_with=collect_with,
    )


@router.post("/generate")
async def generate(request: Request) -> Response:
    return await _generate(request, stream=False)


@router.post("/generate_stream")
async def generate_stream(request: Request) -> Response:
    return await _generate(request, stream=True)


@router.post("/")
async def compat_generate(request: Request) -> Response:
    """TGI's root route (what the ``text-generation`` client calls): ``stream`` decides."""
    return await _generate(request, stream=None, as_list=True)


class _Info(msgspec.Struct, frozen=True):
    model_id: str
    max_input_length: int
    max_total_tokens: int
    max_new_tokens: int
    max_concurrent_requests: int
    version: str = "migserve"
    model_pipeline_tag: str = "text-generation"
    router: str = "migserve-gateway"


@router.get("/info")
async def info(request: Request) -> Response:
    gw = gateway_state(request)
    s = gw.settings
    body = _Info(
        model_id=tgi_model(gw),
        max_input_length=s.max_prompt_chars,
        max_total_tokens=s.max_prompt_chars + s.max_tokens_limit,
        max_new_tokens=s.max_tokens_limit,
        max_concurrent_requests=s.max_in_flight,
    )
    return Response(msgspec.json.encode(body), media_type=JSON)
