"""Helpers for the bridge's integration tests (no tests here).

``FakeEngine`` is a test double at our own seam: a tiny OpenAI-style SSE
server (Starlette, served by uvicorn on a free port) that records what it was
asked, counts how many streams it serves at once, and can be told to fail.
The tests that need a realistic engine use the real sim engine instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import uvicorn
from migserve_agent.bridge.app import Bridge
from migserve_agent.bridge.settings import BridgeSettings
from migserve_shared import subjects
from migserve_shared.bus import ReplyRouter, iterate_replies
from migserve_shared.env import NatsSettings
from migserve_shared.messages import (
    ChatMessage,
    InferenceJob,
    JobReply,
    SamplingParams,
    encode,
    now,
)
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "org/test-model:1"

Mode = Literal["ok", "unavailable", "reject", "truncate_after_2"]


@dataclass
class FakeEngine:
    """What the fake engine does, and what it saw."""

    token_delay_s: float = 0.0
    mode: Mode = "ok"
    healthy: bool = True
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnected: int = 0
    first_token: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def app(self) -> Starlette:
        async def generate(request: Request) -> Response:
            body = msgspec.json.decode(await request.body())
            self.bodies.append(body)
            if self.mode == "unavailable":
                return JSONResponse({"error": {"message": "loading"}}, status_code=503)
            if self.mode == "reject":
                return JSONResponse({"error": {"message": "context too long"}}, status_code=400)
            return StreamingResponse(
                self._stream(body, chat="messages" in body), media_type="text/event-stream"
            )

        async def health(request: Request) -> Response:
            return JSONResponse({"ok": self.healthy}, status_code=200 if self.healthy else 503)

        return Starlette(
            routes=[
                Route("/v1/chat/completions", generate, methods=["POST"]),
                Route("/v1/completions", generate, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
            ]
        )

    async def _stream(self, body: dict[str, Any], *, chat: bool) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        n = int(body.get("max_tokens", 3))
        finished = False
        try:
            if chat:
                yield b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
            for i in range(n):
                if self.mode == "truncate_after_2" and i == 2:
                    finished = True
                    return  # the stream ends without a finish reason or [DONE]
                await asyncio.sleep(self.token_delay_s)
                piece = encode(f"t{i} ")
                field_ = b'"delta":{"content":' + piece + b"}" if chat else b'"text":' + piece
                yield b'data: {"choices":[{"index":0,' + field_ + b',"finish_reason":null}]}\n\n'
                self.first_token.set()
            yield b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
            usage = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
            yield b'data: {"choices":[],"usage":' + encode(usage) + b"}\n\n"
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.in_flight -= 1
            if not finished:
                self.disconnected += 1


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@contextlib.asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = _Server(
        uvicorn.Config(
            app, log_level="warning", ws="none", lifespan="off", timeout_graceful_shutdown=1
        )
    )
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


def bridge_settings(nats_url: str, engine_url: str, **kw: Any) -> BridgeSettings:
    base: dict[str, Any] = {
        "model": MODEL,
        "instance_id": "inst-a",
        "node": "node-1",
        "engine_url": engine_url,
        "engine_kind": "sim",
        "slots": 1,
        "ack_wait_s": 5.0,
        "drain_timeout_s": 5.0,
        "nats": NatsSettings(url=nats_url, name="test-bridge"),
        "fetch_timeout_s": 0.25,
        "health_interval_s": 0.02,
        "health_max_interval_s": 0.05,
    }
    return BridgeSettings(**{**base, **kw})


@contextlib.asynccontextmanager
async def running_bridge(
    settings: BridgeSettings, *, engine_ready: bool = True
) -> AsyncIterator[Bridge]:
    """Run a bridge in this event loop until the block ends, then drain it.

    With ``engine_ready`` the block starts once the bridge found its engine healthy.
    """
    bridge = Bridge(settings)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, on_ready=lambda port: ready.set()))
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait((task, ready_wait), return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if task.done():
            task.result()
        if engine_ready:
            await wait_until(lambda: bridge.health()["engine_ready"])
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_until(predicate: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@dataclass
class Client:
    """Publishes jobs like the gateway does and collects their replies."""

    nc: NATS
    router: ReplyRouter

    async def submit(
        self, *, max_tokens: int = 3, deadline_s: float = 30.0, **kw: Any
    ) -> tuple[InferenceJob, asyncio.Queue[JobReply]]:
        reply_to, queue = self.router.open()
        fields: dict[str, Any] = {
            "job_id": f"job-{reply_to.rsplit('.', 1)[-1]}",
            "model": MODEL,
            "messages": [ChatMessage("user", "hello there")],
            "params": SamplingParams(max_tokens=max_tokens),
            "reply_to": reply_to,
            "deadline": now() + deadline_s,
            "trace_id": "trace-1",
        }
        job = InferenceJob(**{**fields, **kw})
        await self.nc.jetstream().publish(subjects.infer(MODEL), encode(job))
        return job, queue


async def collect(queue: asyncio.Queue[JobReply], within_s: float = 10.0) -> list[JobReply]:
    """Every reply of one job up to its end marker."""
    replies = iterate_replies(queue, first_timeout=within_s, idle_timeout=within_s)
    return [r async for r in replies]


@contextlib.asynccontextmanager
async def client(nc: NATS) -> AsyncIterator[Client]:
    router = ReplyRouter(nc)
    await router.start()
    try:
        yield Client(nc, router)
    finally:
        await router.stop()
