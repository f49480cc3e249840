"""The sim engine over real HTTP: uvicorn in process, the official OpenAI client, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, cast

import httpx
import openai
import pytest
import uvicorn
from migserve_agent.sim_engine import SimEngineConfig, create_app

FAST = {"alpha_ms": 1.0, "beta_ms": 0.0, "prefill_ms_per_token": 0.0}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@contextlib.asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[str]:
    """Serve a sim engine on a free port; yield its base URL."""
    app = create_app(SimEngineConfig(**{"model_id": "sim/test", **FAST, **overrides}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "server did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match[1])


async def test_client_disconnect_cancels_generation_and_frees_the_slot() -> None:
    async with running(slots=1, alpha_ms=20.0) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = cast(AsyncGenerator[str, None], r.aiter_lines())
            while not (await anext(lines)).startswith("data: "):
                pass  # the first chunk arrived: the request holds the slot
            await lines.aclose()
        # the stream is closed long before its 2000 tokens (40 s) are done
        for _ in range(200):
            state = (await client.get("/sim/state")).json()
            if state["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
        assert state["in_flight"] == 0
        assert state["queued"] == 0
        short = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            timeout=5,
        )
        assert short.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, 'tgi_request_failure{err="cancelled"}') == 1
        assert _metric(metrics, "tgi_request_success") == 1


async def test_waiting_request_that_disconnects_leaves_the_queue() -> None:
    async with running(slots=1, alpha_ms=20.0) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2000}}
        async with client.stream("POST", "/generate_stream", json=body) as first:
            lines = cast(AsyncGenerator[str, None], first.aiter_lines())
            await anext(lines)  # the first request holds the slot
            waiting = asyncio.create_task(client.post("/generate", json=body))
            for _ in range(200):
                if (await client.get("/sim/state")).json()["queued"] == 1:
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            for _ in range(200):
                state = (await client.get("/sim/state")).json()
                if state["queued"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert (state["in_flight"], state["queued"]) == (1, 0)
            await lines.aclose()


async def test_official_openai_client() -> None:
    async with running() as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            messages: Any = [{"role": "user", "content": "Say hi"}]
            reply = await client.chat.completions.create(
                model="sim/test", messages=messages, max_tokens=6, seed=3
            )
            assert reply.choices[0].finish_reason == "length"
            assert reply.usage is not None and reply.usage.completion_tokens == 6
            stream = await client.chat.completions.create(
                model="sim/test",
                messages=messages,
                max_tokens=6,
                seed=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                usage = chunk.usage or usage
            assert "".join(parts) == reply.choices[0].message.content
            assert usage is not None and usage.total_tokens == reply.usage.total_tokens
            models = await client.models.list()
            assert [m.id for m in models.data] == ["sim/test"]
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="sim/test", messages=messages, max_tokens=-3
                )
        finally:
            await client.close()


def test_cli_announces_its_port_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "migserve_agent.sim_engine", "--port", "0", "--profile",
         "2g.10gb", "--alpha-ms", "1", "--model", "sim/cli", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "listening"
        url = f"http://127.0.0.1:{line['port']}"
        assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
        info = httpx.get(f"{url}/info", timeout=5).json()
        assert info["model_id"] == "sim/cli"
        assert (info["sim"]["compute_slices"], info["sim"]["memory_slices"]) == (2, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
