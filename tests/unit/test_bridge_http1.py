"""The bridge's HTTP/1.1 client against a scripted loopback server, and its chunk decoder.

The server answers each request with the raw bytes a test gives it, so the
framing cases (chunked, sized, read to close, keep-alive or not, broken
answers) are exactly what is on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.engine import EngineClient
from migserve_agent.bridge.errors import EngineBrokeError, EngineUnavailableError
from migserve_agent.bridge.http1 import (
    ChunkedDecoder,
    ConnectFailed,
    ConnectionBroke,
    Http1Pool,
    ReadTimedOut,
)
from migserve_agent.bridge.sse import DONE, Finish
from migserve_shared.messages import ChatMessage, InferenceJob

#: (the request head and body as received) -> the raw answer, or None to close unanswered
Script = Callable[[bytes], bytes | None]


def chunked(*pieces: bytes, extra: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n" + extra


def sized(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@dataclass
class Server:
    script: Script
    #: close the connection after every answer (a server that breaks off)
    close_after: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_peer: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after or b"connection: close" in answer.lower():
                    break
                if answer.startswith(b"HTTP/1.0"):
                    break  # the answer ends with the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer += 1
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    script: Script, *, close_after: bool = False
) -> AsyncIterator[tuple[Server, Http1Pool]]:
    server = Server(script, close_after=close_after)
    tasks: set[asyncio.Task[None]] = set()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(server.handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    pool = Http1Pool(
        f"http://127.0.0.1:{server.port}", max_idle=2, connect_timeout_s=2, read_timeout_s=0.5
    )
    try:
        yield server, pool
    finally:
        await pool.aclose()
        srv.close()
        await srv.wait_closed()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def fetch(pool: Http1Pool, body: bytes = b"{}") -> tuple[int, bytes]:
    async with pool.request("POST", "/x", body=body, headers=[("a", "b")]) as response:
        data = b"".join([piece async for piece in response.chunks()])
    return response.status, data


async def test_one_write_per_request_and_keep_alive() -> None:
    async with serving(lambda r: chunked(b"hello ", b"world")) as (server, pool):
        assert await fetch(pool, b'{"q":1}') == (200, b"hello world")
        assert await fetch(pool) == (200, b"hello world")
    assert server.connections == 1  # the second request reused the connection
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\na: b\r\n" in head and b"content-length: 7" in head
    assert body == b'{"q":1}'


@pytest.mark.parametrize(
    ("answer", "body", "reused"),
    [
        (sized(b"abc"), b"abc", True),
        (sized(b"abc", b"Connection: close"), b"abc", False),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"until the end", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (chunked(b"x", extra=b"junk after the end"), b"x", False),
    ],
)
async def test_body_framings(answer: bytes, body: bytes, reused: bool) -> None:
    status = 204 if b" 204 " in answer else 200
    async with serving(lambda r: answer) as (server, pool):
        assert await fetch(pool) == (status, body)
        assert await fetch(pool) == (status, body)
    assert server.connections == (1 if reused else 2)


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    answers = iter([chunked(b"one"), None, chunked(b"two")])  # None: close unanswered
    async with serving(lambda r: next(answers)) as (server, pool):
        assert await fetch(pool) == (200, b"one")
        assert await fetch(pool) == (200, b"two")  # first tried on the dead connection
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_leaving_early_closes_the_connection() -> None:
    async with serving(lambda r: chunked(b"a", b"b", b"c")) as (server, pool):
        async with pool.request("POST", "/x", body=b"{}") as response:
            async for _ in response.chunks():
                break
        assert await fetch(pool) == (200, b"abc")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", ConnectionBroke, "body"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", ConnectionBroke, "7 bytes"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", ConnectionBroke, "size"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc", ConnectionBroke, "CRLF"),
        (b"SMTP ready\r\n\r\n", ConnectionBroke, "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", ConnectionBroke, "header"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", ConnectionBroke, "content-length"),
    ],
)
async def test_broken_answers(answer: bytes, error: type[Exception], words: str) -> None:
    async with serving(lambda r: answer, close_after=True) as (_, pool):
        with pytest.raises(error, match=words):
            await fetch(pool)


async def test_silence_is_a_read_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n"
    async with serving(lambda r: head) as (_, pool):
        with pytest.raises(ReadTimedOut, match=r"0\.5 s"):
            await fetch(pool)


async def test_nothing_listening_is_connect_failed() -> None:
    async with serving(lambda r: None) as (server, _):
        port = server.port
    pool = Http1Pool(f"http://127.0.0.1:{port}", max_idle=1, connect_timeout_s=1, read_timeout_s=1)
    with pytest.raises(ConnectFailed, match=str(port)):
        await fetch(pool)


def test_chunk_decoder_gives_every_completed_chunk_of_a_read_at_once() -> None:
    wire = b"3\r\nabc\r\n2;ext=1\r\nde\r\n1\r\nf\r\n0\r\ntrailer: x\r\n\r\n"
    decoder = ChunkedDecoder()
    assert decoder.feed(wire[:12]) == b"abc"  # "de" is not complete yet
    assert decoder.feed(wire[12:30]) == b"def"
    assert not decoder.done
    assert decoder.feed(wire[30:]) == b""
    assert decoder.done and not decoder.leftover
    for cut in range(1, len(wire)):  # any split gives the same payload
        d = ChunkedDecoder()
        assert d.feed(wire[:cut]) + d.feed(wire[cut:]) == b"abcdef" and d.done


# --- the engine adapter over this client ---------------------------------------------------
JOB = InferenceJob(
    job_id="j", model="m", messages=[ChatMessage("user", "hi")], reply_to="r", deadline=1e12
)
SSE_TOKEN = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
SSE_END = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


async def test_engine_client_batches_the_events_of_one_read() -> None:
    answer = chunked(SSE_TOKEN, SSE_TOKEN, SSE_END)
    async with serving(lambda r: answer) as (server, pool):
        engine = EngineClient(client=pool, base_url="http://ignored", dialect=dialect_for("sim"))
        async with contextlib.aclosing(engine.stream_batches(JOB)) as batches:
            got = [batch async for batch in batches]
        assert got == [["a", "a", Finish("stop"), DONE]]
        assert await engine.healthy()
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert server.requests[1].startswith(b"GET /health HTTP/1.1")


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (sized(b"loading").replace(b"200 OK", b"503 Service Unavailable"),
         EngineUnavailableError, "503: loading"),
        (chunked(SSE_TOKEN)[:-5], EngineBrokeError, "broke"),
        (chunked(SSE_TOKEN), EngineBrokeError, "ended before"),
    ],
)  # fmt: skip
async def test_engine_client_translates_errors(
    answer: bytes, error: type[Exception], words: str
) -> None:
    async with serving(lambda r: answer, close_after=True) as (_, pool):
        engine = EngineClient(client=pool, base_url="http://ignored", dialect=dialect_for("sim"))
        with pytest.raises(error, match=words):
            async with contextlib.aclosing(engine.stream(JOB)) as events:
                _ = [event async for event in events]
