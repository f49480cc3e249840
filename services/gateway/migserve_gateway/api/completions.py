"""POST /v1/completions: OpenAI's (legacy) text completions, streamed (SSE) or not."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.openai_route import serve_openai
from migserve_gateway.core.completion import parse_completion_request
from migserve_gateway.core.render_text import TextChunkRenderer, text_completion_body

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await serve_openai(
        request,
        parse=parse_completion_request,
        id_prefix="cmpl-",
        renderer=TextChunkRenderer,
        body_of=text_completion_body,
    )
