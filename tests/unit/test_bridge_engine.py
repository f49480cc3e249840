"""The engine adapter's error translation, through httpx's own mock transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.engine import EngineClient
from migserve_agent.bridge.errors import (
    EngineBrokeError,
    EngineError,
    EngineRejectedError,
    EngineUnavailableError,
)
from migserve_agent.bridge.sse import DONE, Finish, StreamEvent, Usage
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import ChatMessage, InferenceJob

JOB = InferenceJob(
    job_id="j", model="m", messages=[ChatMessage("user", "hi")], reply_to="r", deadline=1e12
)
TOKEN = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
FINISH = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'

Handler = Callable[[httpx.Request], httpx.Response]


async def _events(handler: Handler) -> list[StreamEvent]:
    transport = httpx.MockTransport(handler)
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            engine = EngineClient(
                client=http, base_url="http://engine/", dialect=dialect_for("vllm")
            )
            async with contextlib.aclosing(engine.stream(JOB)) as events:
                return [event async for event in events]
    finally:
        # A stream abandoned mid-body leaves httpx's nested body generators to the
        # event loop's async-generator finalizer, which closes them in tasks of its own.
        await asyncio.sleep(0.01)


class _Body(httpx.AsyncByteStream):
    """A response body that yields ``parts`` and then raises ``error`` (if any)."""

    def __init__(self, parts: list[bytes], error: Exception | None = None) -> None:
        self._parts = parts
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part
        if self._error is not None:
            raise self._error


def _sse(parts: list[bytes], error: Exception | None = None) -> Handler:
    return lambda request: httpx.Response(200, stream=_Body(parts, error))


def _raise(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


async def test_a_complete_stream_yields_its_events_from_the_right_route() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        usage = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}\n\n'
        return httpx.Response(200, stream=_Body([TOKEN, FINISH, usage, b"data: [DONE]\n\n"]))

    assert await _events(handler) == ["a", Finish("stop"), Usage(2, 1), DONE]
    assert str(seen[0].url) == "http://engine/v1/chat/completions"
    assert seen[0].headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("handler", "error", "retryable", "code", "text"),
    [
        pytest.param(
            _raise(httpx.ConnectError("refused")),
            EngineUnavailableError, True, ErrorCode.ENGINE_UNAVAILABLE, "cannot connect",
            id="connection refused",
        ),
        pytest.param(
            _raise(httpx.ConnectTimeout("slow")),
            EngineUnavailableError, True, ErrorCode.ENGINE_UNAVAILABLE, "cannot connect",
            id="connect timeout",
        ),
        pytest.param(
            lambda r: httpx.Response(503, json={"error": "model is loading"}),
            EngineUnavailableError, True, ErrorCode.ENGINE_UNAVAILABLE, "503",
            id="503 loading",
        ),
        pytest.param(
            lambda r: httpx.Response(500, text="boom"),
            EngineUnavailableError, True, ErrorCode.ENGINE_UNAVAILABLE, "boom",
            id="500",
        ),
        pytest.param(
            lambda r: httpx.Response(429, text="busy"),
            EngineUnavailableError, True, ErrorCode.ENGINE_UNAVAILABLE, "429",
            id="429 overloaded",
        ),
        pytest.param(
            lambda r: httpx.Response(400, json={"error": {"message": "too long"}}),
            EngineRejectedError, False, ErrorCode.BAD_REQUEST, "too long",
            id="400 rejected",
        ),
        pytest.param(
            lambda r: httpx.Response(404, text="x" * 5000),
            EngineRejectedError, False, ErrorCode.BAD_REQUEST, "404",
            id="404 with a long body",
        ),
        pytest.param(
            _sse([TOKEN], httpx.RemoteProtocolError("peer closed connection")),
            EngineBrokeError, True, ErrorCode.ENGINE_FAILED, "broke",
            id="connection lost mid-stream",
        ),
        pytest.param(
            _sse([TOKEN], httpx.ReadTimeout("idle")),
            EngineBrokeError, True, ErrorCode.ENGINE_FAILED, "went quiet",
            id="idle timeout",
        ),
        pytest.param(
            _sse([TOKEN, TOKEN]),
            EngineBrokeError, True, ErrorCode.ENGINE_FAILED, "ended before",
            id="ended without finish or DONE",
        ),
        pytest.param(
            _sse([b"{}\n"]),
            EngineBrokeError, True, ErrorCode.ENGINE_FAILED, "ended before",
            id="not SSE at all",
        ),
        pytest.param(
            _sse([TOKEN, b'data: {"error":{"message":"out of memory"}}\n\n']),
            EngineRejectedError, False, ErrorCode.ENGINE_FAILED, "out of memory",
            id="error object in the stream",
        ),
    ],
)  # fmt: skip
async def test_failures_are_translated(
    handler: Handler, error: type[EngineError], retryable: bool, code: ErrorCode, text: str
) -> None:
    with pytest.raises(error) as caught:
        await _events(handler)
    assert caught.value.retryable is retryable
    assert caught.value.code == code
    assert text in str(caught.value)
    assert len(str(caught.value)) < 2300


async def test_health_is_200_only() -> None:
    async def check(handler: Handler) -> bool:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            engine = EngineClient(client=http, base_url="http://e", dialect=dialect_for("tgi"))
            return await engine.healthy()

    assert await check(lambda r: httpx.Response(200, json={"status": "ok"}))
    assert not await check(lambda r: httpx.Response(503))
    assert not await check(_raise(httpx.ConnectError("refused")))
