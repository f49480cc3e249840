"""Streaming a job to the client as server-sent events, and noticing when it leaves.

``DisconnectWatch`` waits on the ASGI ``receive`` channel for
``http.disconnect`` while the request is held or streamed, and tells the job
(which then cancels itself). ``JobStreamResponse`` writes the chunks: tokens
as ``chat.completion.chunk`` lines, the end marker as the final chunk
(+ usage when asked) and ``[DONE]``, an error after the first token as an
``error`` event (then ``[DONE]``, except on TGI's routes). Every reply that
has already arrived when a write is due goes out in that one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from migserve_shared.logs import log_context
from migserve_shared.messages import JobEnd, JobError, TokenChunk
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from migserve_gateway.core.errors import ApiError, from_job_error
from migserve_gateway.core.render import Usage, usage
from migserve_gateway.dispatch import ClientGoneError, JobRun

log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class DisconnectWatch:
    """Calls ``on_disconnect`` once if the client disconnects before ``stop()``."""

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._task = asyncio.create_task(self._watch(receive, on_disconnect), name="client-watch")

    @staticmethod
    async def _watch(receive: Receive, on_disconnect: Callable[[], None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                on_disconnect()
                return

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class StreamRenderer(Protocol):
    """What a streaming API renders: tokens, the end, an error after the first token."""

    def token(self, text: str, *, first: bool = False) -> bytes: ...
    def end(self, finish_reason: str, used: Usage) -> bytes: ...
    def error(self, err: ApiError) -> bytes: ...


class JobStreamResponse(Response):
    """Streams one job's replies as SSE events rendered by ``renderer``."""

    def __init__(
        self,
        *,
        run: JobRun,
        first: TokenChunk | JobEnd,
        renderer: StreamRenderer,
        watch: DisconnectWatch,
    ) -> None:
        super().__init__(status_code=200)
        self._run = run
        self._first = first
        self._renderer = renderer
        self._watch = watch
        self.raw_headers = [*SSE_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self._run
        try:
            with log_context(model=run.model):
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                await self._stream(send)
        finally:
            await self._watch.stop()
            await run.close()

    async def _stream(self, send: Send) -> None:
        run, render = self._run, self._renderer
        reply: TokenChunk | JobEnd | JobError | None = self._first
        tokens = 0
        first = True
        body: list[bytes] = []
        try:
            while True:
                if isinstance(reply, TokenChunk):
                    tokens += 1
                    body.append(render.token(reply.text, first=first))
                    first = False
                elif isinstance(reply, JobEnd):
                    if first:
                        body.append(render.token("", first=True))
                    used = usage(reply.prompt_tokens, reply.completion_tokens or tokens)
                    body.append(render.end(reply.finish_reason, used))
                    await send({"type": "http.response.body", "body": b"".join(body)})
                    return
                elif reply is not None:
                    err = from_job_error(reply.code, reply.message, run.model)
                    await self._fail(send, err, b"".join(body))
                    return
                # every reply that already arrived goes out in the same write
                reply = run.next_ready()
                if reply is None:
                    chunk = b"".join(body)
                    body.clear()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    reply = await run.next_reply()
        except ClientGoneError:
            log.info("client left during the stream of job %s", run.job.job_id)
        except ApiError as err:
            await self._fail(send, err, b"".join(body))

    async def _fail(self, send: Send, err: ApiError, before: bytes = b"") -> None:
        log.warning("stream of job %s ended with an error: %s", self._run.job.job_id, err.message)
        body = before + self._renderer.error(err)
        await send({"type": "http.response.body", "body": body, "more_body": False})
