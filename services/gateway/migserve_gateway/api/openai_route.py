"""The OpenAI-shaped routes' shared body: parse, then stream or collect.

``/v1/chat/completions`` and ``/v1/completions`` differ only in how they
parse a body, the prefix of their completion ids, and how they render a
stream and a whole answer; :func:`serve_openai` takes those as parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.body import read_json_body
from migserve_gateway.api.serve import Collected, serve_call
from migserve_gateway.api.sse import StreamRenderer
from migserve_gateway.api.state import gateway_state
from migserve_gateway.core.chat import ChatCall, RequestLimits
from migserve_gateway.core.render import Usage, usage
from migserve_gateway.dispatch import JobRun


class RendererFactory(Protocol):
    """Builds the stream renderer of one completion (ChunkRenderer, TextChunkRenderer)."""

    def __call__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> StreamRenderer: ...


class BodyRenderer(Protocol):
    """Renders one whole completion's JSON body (completion_body, text_completion_body)."""

    def __call__(
        self, *, completion_id: str, created: int, model: str, text: str, finish_reason: str,
        used: Usage,
    ) -> bytes: ...  # fmt: skip


async def serve_openai(
    request: Request,
    *,
    parse: Callable[[bytes, RequestLimits], ChatCall],
    id_prefix: str,
    renderer: RendererFactory,
    body_of: BodyRenderer,
) -> Response:
    """Read and ``parse`` the body, then serve the call as a stream or a whole answer."""
    started = time.perf_counter()
    gw = gateway_state(request)
    body = await read_json_body(request, gw.settings.max_body_bytes)
    call = parse(body, gw.limits)

    def completion_id(run: JobRun) -> str:
        return id_prefix + run.job.job_id.removeprefix("job-")

    def stream_with(run: JobRun) -> StreamRenderer:
        return renderer(
            completion_id=completion_id(run),
            created=int(run.job.created),
            model=call.model,
            include_usage=call.include_usage,
        )

    def collect_with(run: JobRun, done: Collected) -> Response:
        body = body_of(
            completion_id=completion_id(run),
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
