"""POST /v1/completions: OpenAI's (legacy) text completions, streamed (SSE) or not."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.body import read_json_body
from migserve_gateway.api.serve import Collected, serve_call
from migserve_gateway.api.state import gateway_state
from migserve_gateway.core.completion import parse_completion_request
from migserve_gateway.core.render import usage
from migserve_gateway.core.render_text import TextChunkRenderer, text_completion_body
from migserve_gateway.dispatch import JobRun

router = APIRouter()


def _completion_id(run: JobRun) -> str:
    return "cmpl-" + run.job.job_id.removeprefix("job-")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    started = time.perf_counter()
    gw = gateway_state(request)
    body = await read_json_body(request, gw.settings.max_body_bytes)
    call = parse_completion_request(body, gw.limits)

    def stream_with(run: JobRun) -> TextChunkRenderer:
        return TextChunkRenderer(
            completion_id=_completion_id(run),
            created=int(run.job.created),
            model=call.model,
            include_usage=call.include_usage,
        )

    def collect_with(run: JobRun, done: Collected) -> Response:
        body = text_completion_body(
            completion_id=_completion_id(run),
            created=int(run.job.created),
            model=run.model,
            text="".join(done.texts),
            finish_reason=done.end.finish_reason,
            used=usage(done.end.prompt_tokens, done.completion_tokens),
        )
        return Response(body, media_type="application/json")

    return await serve_call(
        request,
        call,
        started=started,
        stream=call.stream,
        stream_with=stream_with,
        collect_with=collect_with,
    )
