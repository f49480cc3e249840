"""The HTTP adapter to one engine: stream a job's tokens, probe its health.

One shared ``httpx.AsyncClient`` (connection pooling, keep-alive) carries all
of the bridge's streams. httpx errors are translated here, with their cause
chained, into the bridge's ``EngineError`` tree:

- cannot connect, 5xx, 429, 408            -> ``EngineUnavailableError`` (retryable)
- connection lost, idle too long, no end  -> ``EngineBrokeError`` (retryable)
- other 4xx, an error object in the stream -> ``EngineRejectedError`` (not retryable)

The stream read has no total timeout, only an idle timeout between reads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Final, cast

import httpx
from migserve_shared.messages import InferenceJob

from migserve_agent.bridge.dialect import EngineDialect
from migserve_agent.bridge.errors import (
    EngineBrokeError,
    EngineRejectedError,
    EngineUnavailableError,
)
from migserve_agent.bridge.sse import EngineReportedError, StreamEvent

log = logging.getLogger(__name__)

_HEADERS: Final = {"content-type": "application/json", "accept": "text/event-stream"}
_MAX_ERROR_BODY: Final = 2048
_RETRYABLE_STATUS: Final = frozenset({408, 429})


def new_http_client(
    *, slots: int, connect_timeout_s: float, idle_timeout_s: float
) -> httpx.AsyncClient:
    """The shared client: enough pooled connections for every slot, an idle read timeout."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=connect_timeout_s, read=idle_timeout_s, write=30.0, pool=30.0
        ),
        limits=httpx.Limits(max_connections=slots + 2, max_keepalive_connections=slots + 2),
        trust_env=False,
    )


class EngineClient:
    """Talks to one engine through its dialect."""

    def __init__(self, *, client: httpx.AsyncClient, base_url: str, dialect: EngineDialect) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._dialect = dialect
        self._health_url = self._base + dialect.health_path

    @property
    def dialect(self) -> EngineDialect:
        return self._dialect

    async def healthy(self, *, timeout_s: float = 2.0) -> bool:
        """True when the engine's health route answers 200."""
        try:
            response = await self._client.get(self._health_url, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stream(self, job: InferenceJob) -> AsyncGenerator[StreamEvent, None]:
        """Yield the events of ``job``'s streamed answer; raise ``EngineError`` on failure.

        Iterate it inside ``contextlib.aclosing`` so the HTTP stream closes
        as soon as the consumer stops, not when the generator is collected.

        The stream ends after a complete answer (``[DONE]`` or a finish reason);
        an error object inside the stream raises ``EngineRejectedError``.
        """
        url = self._base + self._dialect.route(job.api)
        body = self._dialect.request_body(job)
        parser = self._dialect.new_parser()
        try:
            async with self._client.stream("POST", url, content=body, headers=_HEADERS) as resp:
                if resp.status_code != 200:
                    raise await _status_error(resp)
                async with contextlib.aclosing(_reads(resp)) as reads:
                    async for data in reads:
                        for event in parser.feed(data):
                            if type(event) is EngineReportedError:
                                raise EngineRejectedError(f"engine error: {event.message}")
                            yield event
                for event in parser.close():
                    if type(event) is EngineReportedError:
                        raise EngineRejectedError(f"engine error: {event.message}")
                    yield event
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise EngineUnavailableError(f"cannot connect to the engine at {url}: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise EngineBrokeError(f"the engine at {url} went quiet: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise EngineBrokeError(f"the engine's stream from {url} broke: {exc!r}") from exc
        if parser.malformed:
            log.warning("engine sent %d malformed SSE lines", parser.malformed)
        if not parser.complete:
            raise EngineBrokeError(f"engine stream from {url} ended before the answer was complete")


def _reads(resp: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive (httpx types its generator as an iterator)."""
    return cast(AsyncGenerator[bytes, None], resp.aiter_bytes())


async def _status_error(resp: httpx.Response) -> EngineUnavailableError | EngineRejectedError:
    detail = ""
    try:
        async for chunk in resp.aiter_bytes():
            detail += chunk.decode("utf-8", "replace")
            if len(detail) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    detail = detail[:_MAX_ERROR_BODY].strip()
    message = f"engine answered {resp.status_code}: {detail or resp.reason_phrase}"
    if resp.status_code >= 500 or resp.status_code in _RETRYABLE_STATUS:
        return EngineUnavailableError(message)
    return EngineRejectedError(message, status=resp.status_code)
