"""The HTTP adapter to one engine: stream a job's tokens, probe its health.

The bridge's one ``Http1Pool`` (``http1``: keep-alive, one write per
request) carries all of its streams; an ``httpx.AsyncClient`` works too
(tests use httpx's mock transport). Both clients' errors are translated
here, with their cause chained, into the bridge's ``EngineError`` tree:

- cannot connect, 5xx, 429, 408            -> ``EngineUnavailableError`` (retryable)
- connection lost, idle too long, no end  -> ``EngineBrokeError`` (retryable)
- other 4xx, an error object in the stream -> ``EngineRejectedError`` (not retryable)

The stream read has no total timeout, only an idle timeout between reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Final, Protocol, cast

import httpx
from migserve_shared.messages import InferenceJob

from migserve_agent.bridge.dialect import EngineDialect
from migserve_agent.bridge.errors import (
    EngineBrokeError,
    EngineRejectedError,
    EngineUnavailableError,
)
from migserve_agent.bridge.http1 import ConnectFailed, Http1Pool, HttpError, ReadTimedOut
from migserve_agent.bridge.sse import EngineReportedError, StreamEvent

log = logging.getLogger(__name__)

_HEADERS: Final = {"content-type": "application/json", "accept": "text/event-stream"}
_HEADER_PAIRS: Final = tuple(_HEADERS.items())
_MAX_ERROR_BODY: Final = 2048
_RETRYABLE_STATUS: Final = frozenset({408, 429})

#: what the engine client sends its requests with
EngineHttp = Http1Pool | httpx.AsyncClient


def new_http_pool(
    base_url: str, *, slots: int, connect_timeout_s: float, idle_timeout_s: float
) -> Http1Pool:
    """The bridge's pool: a kept-alive connection for every slot, an idle read timeout."""
    return Http1Pool(
        base_url,
        max_idle=slots + 2,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=idle_timeout_s,
    )


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class _HttpxAnswer:
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def reason(self) -> str:
        return self.response.reason_phrase

    def chunks(self) -> AsyncIterator[bytes]:
        # httpx types its generator as an iterator
        return cast(AsyncGenerator[bytes, None], self.response.aiter_bytes())


class EngineClient:
    """Talks to one engine through its dialect."""

    def __init__(self, *, client: EngineHttp, base_url: str, dialect: EngineDialect) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._dialect = dialect

    @property
    def dialect(self) -> EngineDialect:
        return self._dialect

    async def healthy(self, *, timeout_s: float = 2.0) -> bool:
        """True when the engine's health route answers 200."""
        path = self._dialect.health_path
        client = self._client
        try:
            if isinstance(client, httpx.AsyncClient):
                response = await client.get(self._base + path, timeout=timeout_s)
                return response.status_code == 200
            async with (
                asyncio.timeout(timeout_s),
                client.request("GET", path, read_timeout_s=timeout_s) as answer,
            ):
                async for _ in answer.chunks():
                    pass
                return answer.status == 200
        except (httpx.HTTPError, HttpError, TimeoutError):
            return False

    @contextlib.asynccontextmanager
    async def _post(self, path: str, body: bytes) -> AsyncIterator[_Answer]:
        client = self._client
        if isinstance(client, httpx.AsyncClient):
            url = self._base + path
            async with client.stream("POST", url, content=body, headers=_HEADERS) as response:
                yield _HttpxAnswer(response)
            return
        async with client.request("POST", path, body=body, headers=_HEADER_PAIRS) as answer:
            yield answer

    async def stream(self, job: InferenceJob) -> AsyncGenerator[StreamEvent, None]:
        """Yield the events of ``job``'s streamed answer one by one (see ``stream_batches``)."""
        async with contextlib.aclosing(self.stream_batches(job)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def stream_batches(self, job: InferenceJob) -> AsyncGenerator[list[StreamEvent], None]:
        """Yield the events of ``job``'s streamed answer, those of one read together;
        raise ``EngineError`` on failure.

        Iterate it inside ``contextlib.aclosing`` so the HTTP stream closes
        as soon as the consumer stops, not when the generator is collected.

        The stream ends after a complete answer (``[DONE]`` or a finish reason);
        an error object inside the stream raises ``EngineRejectedError``.
        """
        path = self._dialect.route(job.api)
        url = self._base + path
        body = self._dialect.request_body(job)
        parser = self._dialect.new_parser()
        try:
            async with self._post(path, body) as answer:
                if answer.status != 200:
                    raise await _status_error(answer)
                async for data in answer.chunks():
                    events = parser.feed(data)
                    if events:
                        yield _checked(events)
                tail = parser.close()
                if tail:
                    yield _checked(tail)
        except (httpx.ConnectError, httpx.ConnectTimeout, ConnectFailed) as exc:
            raise EngineUnavailableError(f"cannot connect to the engine at {url}: {exc!r}") from exc
        except (httpx.TimeoutException, ReadTimedOut) as exc:
            raise EngineBrokeError(f"the engine at {url} went quiet: {exc!r}") from exc
        except (httpx.HTTPError, HttpError) as exc:
            raise EngineBrokeError(f"the engine's stream from {url} broke: {exc!r}") from exc
        if parser.malformed:
            log.warning("engine sent %d malformed SSE lines", parser.malformed)
        if not parser.complete:
            raise EngineBrokeError(f"engine stream from {url} ended before the answer was complete")


def _checked(events: list[StreamEvent]) -> list[StreamEvent]:
    """``events`` unless one is an error object the engine sent inside the stream."""
    for event in events:
        if type(event) is EngineReportedError:
            raise EngineRejectedError(f"engine error: {event.message}")
    return events


async def _status_error(answer: _Answer) -> EngineUnavailableError | EngineRejectedError:
    detail = ""
    try:
        async for chunk in answer.chunks():
            detail += chunk.decode("utf-8", "replace")
            if len(detail) >= _MAX_ERROR_BODY:
                break
    except (httpx.HTTPError, HttpError):
        pass
    detail = detail[:_MAX_ERROR_BODY].strip()
    message = f"engine answered {answer.status}: {detail or answer.reason}"
    if answer.status >= 500 or answer.status in _RETRYABLE_STATUS:
        return EngineUnavailableError(message)
    return EngineRejectedError(message, status=answer.status)
