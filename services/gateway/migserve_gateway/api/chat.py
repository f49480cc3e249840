"""POST /v1/chat/completions: OpenAI-compatible, streamed (SSE) or not."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter
from migserve_shared.logs import log_context
from migserve_shared.messages import JobEnd, TokenChunk
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.api.body import read_json_body
from migserve_gateway.api.sse import DisconnectWatch, JobStreamResponse
from migserve_gateway.api.state import SCOPE_CALLER, SCOPE_CONTEXT, SCOPE_MODEL, gateway_state
from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.chat import parse_chat_request
from migserve_gateway.core.errors import from_job_error, model_not_found
from migserve_gateway.core.render import ChunkRenderer, completion_body, usage
from migserve_gateway.core.tracing import RequestContext
from migserve_gateway.dispatch import ClientGoneError, JobRun

log = logging.getLogger(__name__)

router = APIRouter()

#: nginx's "client closed request": counted, never seen by the client
CLIENT_CLOSED = 499


def _completion_id(run: JobRun) -> str:
    return "chatcmpl-" + run.job.job_id.removeprefix("job-")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    gw = gateway_state(request)
    body = await read_json_body(request, gw.settings.max_body_bytes)
    call = parse_chat_request(body, gw.limits)
    if gw.view.model(call.model) is None:
        raise model_not_found(call.model)
    request.scope[SCOPE_MODEL] = call.model
    ctx: RequestContext = request.scope[SCOPE_CONTEXT]
    with log_context(model=call.model):
        caller = request.scope.get(SCOPE_CALLER, ANONYMOUS)
        run = await gw.dispatcher.submit(call, ctx, started=started, caller=caller)
        watch = DisconnectWatch(request.receive, run.client_gone)
        handed_off = False
        try:
            first = await run.first()
            if not call.stream:
                return await _collect(run, first)
            renderer = ChunkRenderer(
                completion_id=_completion_id(run),
                created=int(run.job.created),
                model=call.model,
                include_usage=call.include_usage,
            )
            handed_off = True  # the response closes the watch and the run when it ends
            return JobStreamResponse(run=run, first=first, renderer=renderer, watch=watch)
        except ClientGoneError:
            log.info("client left before job %s answered", run.job.job_id)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_off:
                await watch.stop()
                await run.close()


async def _collect(run: JobRun, first: TokenChunk | JobEnd) -> Response:
    """Gather a whole completion (non-streaming)."""
    texts: list[str] = []
    reply = first
    while isinstance(reply, TokenChunk):
        texts.append(reply.text)
        nxt = await run.next_reply()
        if not isinstance(nxt, TokenChunk | JobEnd):
            raise from_job_error(nxt.code, nxt.message, run.model)
        reply = nxt
    body = completion_body(
        completion_id=_completion_id(run),
        created=int(run.job.created),
        model=run.model,
        text="".join(texts),
        finish_reason=reply.finish_reason,
        used=usage(reply.prompt_tokens, reply.completion_tokens or len(texts)),
    )
    return Response(body, media_type="application/json")
