"""The load generator against a tiny in-process HTTP server on loopback.

The server speaks just enough HTTP/1.1 (keep-alive, chunked SSE) and answers
each request by the next scripted behaviour: a good stream, an HTTP error, a
connection closed before or during the response, an error event, a stream cut
short. The reports must classify each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from migserve_cli.loadgen import LoadReport, format_report, percentile, run_load

TOKENS = 4


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: object) -> bytes:
    return _chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")


def _token(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\nx-migserve-instance: inst-1\r\nx-request-id: r-1\r\n\r\n"
)


@dataclass
class TinyServer:
    script: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError
        ):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length))
                behaviour = self.script.pop(0) if self.script else "ok"
                self.served.append(behaviour)
                if not await self.answer(behaviour, bool(body["stream"]), writer):
                    break
        writer.close()

    async def answer(self, behaviour: str, stream: bool, w: asyncio.StreamWriter) -> bool:
        """Write the response; False when the connection must close now."""
        if behaviour == "close_before":
            return False
        if behaviour == "http503":
            payload = b'{"error":{"code":"no_capacity"}}'
            w.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n" % len(payload)
            )
            w.write(payload)
            return True
        if not stream:
            payload = json.dumps({"usage": {"completion_tokens": TOKENS}}).encode()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
            return True
        w.write(HEAD)
        for i in range(TOKENS):
            w.write(_sse(_token(f"t{i} ")))
            await w.drain()
            await asyncio.sleep(0.002)
            if behaviour == "close_mid":
                return False
        if behaviour == "error_event":
            w.write(_sse({"error": {"message": "engine died", "code": "engine_error"}}))
        elif behaviour == "ok":
            w.write(_sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            w.write(_chunk(b"data: [DONE]\n\n"))
        w.write(b"0\r\n\r\n")  # "incomplete": the stream just ends
        await w.drain()
        return True


@pytest.fixture
async def tiny() -> AsyncIterator[TinyServer]:
    srv = TinyServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        for task in srv.handlers:
            task.cancel()
        await asyncio.gather(*srv.handlers, return_exceptions=True)
        await server.wait_closed()


def _url(srv: TinyServer) -> str:
    return f"http://127.0.0.1:{srv.port}"


async def test_streams_at_concurrency_and_measures(tiny: TinyServer) -> None:
    report = await run_load(_url(tiny), "m", concurrency=3, duration_s=0.3)
    assert report.failed == 0 and report.errors == {}
    assert report.ok == len(report.records) >= 3
    assert report.retries == 0
    assert len(report.ttft_ms) == len(report.tpot_ms) == report.ok
    assert all(r.tokens == TOKENS and r.instance == "inst-1" for r in report.records)
    assert all(r.status == 200 and r.request_id == "r-1" for r in report.records)
    assert all(t > 0 for t in report.tpot_ms)
    assert report.started <= report.records[0].start <= report.records[-1].end <= report.ended
    assert report.tokens == TOKENS * report.ok


async def test_not_streaming(tiny: TinyServer) -> None:
    report = await run_load(_url(tiny), "m", concurrency=1, duration_s=0.1, stream=False)
    assert report.failed == 0 and report.ok >= 1
    assert report.tpot_ms == [] and len(report.ttft_ms) == report.ok


async def test_each_failure_has_its_reason(tiny: TinyServer) -> None:
    script = ["http503", "close_before", "close_mid", "error_event", "incomplete"]
    tiny.script = list(script)
    report = await run_load(_url(tiny), "m", concurrency=1, duration_s=0.2)
    assert tiny.served[:5] == script
    assert report.errors == {
        "http_503": 1,
        "disconnected_before_response": 1,
        "disconnected_mid_stream": 1,
        "stream_error": 1,
        "incomplete_stream": 1,
    }
    assert report.failed == 5 and report.ok == len(report.records) - 5
    first = report.records[0]
    assert first.status == 503 and "no_capacity" in first.detail
    assert "engine died" in report.records[3].detail


async def test_retry_once_on_connection_errors_counts_apart(tiny: TinyServer) -> None:
    tiny.script = ["close_before", "ok", "close_mid", "close_before", "close_before"]
    report = await run_load(_url(tiny), "m", concurrency=1, duration_s=0.2, retry_connect=True)
    # retried: the first close_before (then ok); close_mid is never retried (bytes came);
    # the pair of close_before fails on its second attempt
    assert report.retries == 2
    assert report.retry_reasons == {"disconnected_before_response": 2}
    assert report.errors == {"disconnected_mid_stream": 1, "disconnected_before_response": 1}
    assert [r.attempts for r in report.records[:3]] == [2, 1, 2]
    assert report.records[0].ok and report.records[0].first_error == "disconnected_before_response"


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        report = await run_load(f"http://127.0.0.1:{port}", "m", concurrency=2, duration_s=0.15)
        retried = await run_load(
            f"http://127.0.0.1:{port}", "m", concurrency=1, duration_s=0.1, retry_connect=True
        )
    assert report.ok == 0 and set(report.errors) == {"connect_error"}
    assert report.failed == len(report.records) >= 2
    assert len(report.records) < 40  # it backs off instead of spinning
    assert retried.retries == len(retried.records) and retried.errors.keys() == {"connect_error"}


async def test_stop_event_ends_the_run_early(tiny: TinyServer) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    report = await run_load(_url(tiny), "m", concurrency=2, duration_s=30, stop=stop)
    assert report.duration_s < 2 and report.ok >= 2


def test_summary_table_and_percentiles() -> None:
    report = LoadReport(ok=3, failed=1, errors={"http_503": 1}, ttft_ms=[10.0, 20.0, 30.0])
    report.started, report.ended = 0.0, 2.0
    text = format_report(report)
    assert [line.split()[-1] for line in text.splitlines() if "failed: http_503" in line] == ["1"]
    assert "requests/s" in text and "20.0 / 30.0 / 30.0" in text
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0


async def test_bad_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        await run_load("http://127.0.0.1:1", "m", concurrency=0, duration_s=1)


def test_cli_load_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    from migserve_cli.__main__ import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        code = main(
            ["load", "--url", url, "--model", "m", "--duration", "0.1", "--concurrency", "1"]
        )
    out = capsys.readouterr().out
    assert code == 1  # every request failed: nothing listens
    assert "failed: connect_error" in out and "TTFT ms p50/p95/p99" in out
