"""Serving one validated call, whatever its API: hold, then stream or collect.

A route parses its body into a :class:`ChatCall` and hands it here with how
to render a stream (``stream_with``) and a whole answer (``collect_with``).
Admission, dispatch, disconnect watching and closing the run live here once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from migserve_shared.logs import log_context
from migserve_shared.messages import JobEnd, TokenChunk
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.adapters.registry import RegistryUnavailableError
from migserve_gateway.api.sse import DisconnectWatch, JobStreamResponse, StreamRenderer
from migserve_gateway.api.state import (
    SCOPE_CALLER,
    SCOPE_CONTEXT,
    SCOPE_MODEL,
    GatewayState,
    gateway_state,
)
from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.chat import ChatCall
from migserve_gateway.core.errors import from_job_error, model_not_found
from migserve_gateway.core.tracing import RequestContext
from migserve_gateway.dispatch import ClientGoneError, JobRun

log = logging.getLogger(__name__)

#: nginx's "client closed request": counted, never seen by the client
CLIENT_CLOSED = 499


async def _registered_after_all(gw: GatewayState, model: str) -> bool:
    """Read the registry itself when the view lacks ``model``.

    The view follows the models bucket a few milliseconds behind, so a model
    registered just before (through another gateway, or while this one
    started) may be missing from it; a registry hit goes into the view.
    """
    try:
        spec = await gw.registry.get(model)
    except RegistryUnavailableError as exc:
        log.warning("model %s is not in the view and the registry is unavailable: %s", model, exc)
        return False
    if spec is None:
        return False
    log.info("model %s was missing from the view; found in the registry", model)
    gw.view.put_model(spec)
    return True


@dataclass(frozen=True, slots=True)
class Collected:
    """A whole completion: its token texts and how it ended."""

    texts: list[str]
    end: JobEnd

    @property
    def completion_tokens(self) -> int:
        return self.end.completion_tokens or len(self.texts)


async def collect(run: JobRun, first: TokenChunk | JobEnd) -> Collected:
    """Gather every token of a run; ApiError for an error reply."""
    texts: list[str] = []
    reply = first
    while isinstance(reply, TokenChunk):
        texts.append(reply.text)
        nxt = await run.next_reply()
        if not isinstance(nxt, TokenChunk | JobEnd):
            raise from_job_error(nxt.code, nxt.message, run.model)
        reply = nxt
    return Collected(texts, reply)


async def serve_call(
    request: Request,
    call: ChatCall,
    *,
    started: float | None = None,
    stream: bool,
    stream_with: Callable[[JobRun], StreamRenderer],
    collect_with: Callable[[JobRun, Collected], Response],
) -> Response:
    """Dispatch ``call`` and answer with a stream or a whole body."""
    started = time.perf_counter() if started is None else started
    gw = gateway_state(request)
    if gw.view.model(call.model) is None and not await _registered_after_all(gw, call.model):
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
            if not stream:
                return collect_with(run, await collect(run, first))
            renderer = stream_with(run)
            handed_off = True  # the response closes the watch and the run when it ends
            return JobStreamResponse(run=run, first=first, renderer=renderer, watch=watch)
        except ClientGoneError:
            log.info("client left before job %s answered", run.job.job_id)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_off:
                await watch.stop()
                await run.close()
