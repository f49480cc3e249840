"""POST /v1/chat/completions: OpenAI-compatible, streamed (SSE) or not."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.openai_route import serve_openai
from migserve_gateway.core.chat import parse_chat_request
from migserve_gateway.core.render import ChunkRenderer, completion_body

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve_openai(
        request,
        parse=parse_chat_request,
        id_prefix="chatcmpl-",
        renderer=ChunkRenderer,
        body_of=completion_body,
    )
