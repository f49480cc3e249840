"""Helpers for the engine adapters' tests against recorded answers (no tests here)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.engine import EngineClient
from migserve_agent.bridge.sse import StreamEvent
from migserve_shared.messages import ChatMessage, InferenceJob, SamplingParams


def chat_job(model: str, content: str, params: SamplingParams) -> InferenceJob:
    """A one-message chat job for ``model``."""
    return InferenceJob(
        job_id="j1",
        model=model,
        messages=[ChatMessage("user", content)],
        reply_to="_INBOX.x",
        deadline=1e12,
        params=params,
    )


class Pieces(httpx.AsyncByteStream):
    """A response body that arrives ``size`` bytes at a time (no async generator to finalize)."""

    def __init__(self, body: bytes, size: int) -> None:
        self._chunks = [body[i : i + size] for i in range(0, len(body), size)]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)


async def stream_recording(
    body: bytes, the_job: InferenceJob, requests: list[httpx.Request], *, engine: str, size: int
) -> list[StreamEvent]:
    """Stream a recorded SSE body through the bridge's engine client for ``engine``
    (dialect and host), ``size`` bytes at a time; every request is appended to ``requests``."""

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Pieces(body, size)
        )

    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = EngineClient(
                client=http, base_url=f"http://{engine}:8000", dialect=dialect_for(engine)
            )
            async with contextlib.aclosing(client.stream(the_job)) as events:
                return [event async for event in events]
    finally:
        # a stream abandoned mid-body leaves httpx's body generators to the loop's
        # async-generator finalizer (as in test_bridge_engine.py)
        await asyncio.sleep(0.01)
