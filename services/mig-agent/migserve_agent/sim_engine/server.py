"""The sim engine's HTTP API: a SIMULATED inference server with TGI and OpenAI routes.

It generates lorem-ipsum tokens, never runs a model, and paces them with the
performance model of the MIG slice it pretends to use (see ``perf``). Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: OpenAI, streamed or not
- ``POST /generate``, ``POST /generate_stream``: TGI
- ``GET /health`` (503 while "loading", then 200), ``GET /info``, ``GET /v1/models``
- ``GET /metrics``: TGI-named Prometheus series
- ``POST /sim/speed`` ``{"factor": f}``: slow down (f > 1) or speed up the engine
- ``GET /sim/state``: settings, performance model, in-flight and queued requests
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Literal

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Send

from migserve_agent.sim_engine import render
from migserve_agent.sim_engine.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    GenerationResponse,
    Produce,
    send_body,
    send_start,
)
from migserve_agent.sim_engine.config import SimEngineConfig
from migserve_agent.sim_engine.engine import OnToken, QueueFullError, RunTimes, SimEngine
from migserve_agent.sim_engine.metrics import CONTENT_TYPE, SimMetrics
from migserve_agent.sim_engine.schemas import (
    GenerationRequest,
    RequestError,
    SpeedBody,
    chat_request,
    completion_request,
    decode,
    tgi_request,
)
from migserve_agent.sim_engine.text import Completion, complete

log = logging.getLogger(__name__)

Api = Literal["chat", "text", "tgi"]


class _ApiError(Exception):
    """An error answer, rendered in the dialect of the API that was called."""

    def __init__(self, status: int, message: str, *, code: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.reason = reason  # err label of tgi_request_failure


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    """A validated request and its precomputed output."""

    api: Api
    request: GenerationRequest
    completion: Completion
    seed: int
    request_id: str
    created: int


class _SimServer:
    """Route handlers of one engine; all its state lives here."""

    def __init__(self, config: SimEngineConfig) -> None:
        self.config = config
        self.metrics = SimMetrics()
        self.engine = SimEngine(
            perf=config.perf_model(),
            slots=config.slots,
            metrics=self.metrics,
            max_queue=config.max_queue,
        )
        self._seeds = random.Random(config.seed)
        self._ready_at = time.monotonic() + config.startup_delay_s
        self._created = int(time.time())

    @property
    def ready(self) -> bool:
        if self.config.never_healthy or self.config.fail_start:  # injected faults
            return False
        return time.monotonic() >= self._ready_at

    # -- inference ---------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._inference(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._inference(request, "text")

    async def generate(self, request: Request) -> Response:
        return await self._inference(request, "tgi", stream=False)

    async def generate_stream(self, request: Request) -> Response:
        return await self._inference(request, "tgi", stream=True)

    async def _inference(self, request: Request, api: Api, *, stream: bool = False) -> Response:
        self.metrics.request_received()
        try:
            job = self._job(api, await request.body(), stream=stream)
        except _ApiError as exc:
            self.metrics.request_failed(exc.reason)
            log.info("rejected %s request: %s (%s)", api, exc.message, exc.code)
            return _error_response(api, exc)
        return GenerationResponse(self._producer(job))

    def _job(self, api: Api, body: bytes, *, stream: bool) -> _Job:
        if not self.ready:
            raise _ApiError(503, "model is loading", code="model_loading", reason="unavailable")
        limit = self.config.max_stop_sequences
        try:
            if api == "chat":
                req = chat_request(body, max_stop_sequences=limit)
            elif api == "text":
                req = completion_request(body, max_stop_sequences=limit)
            else:
                req = tgi_request(body, max_stop_sequences=limit, stream=stream)
        except RequestError as exc:
            status = 422 if api == "tgi" and exc.code != "invalid_json" else 400
            raise _ApiError(status, exc.message, code=exc.code, reason="validation") from exc
        max_tokens = self._max_tokens(req)
        try:
            self.engine.check_admission()
        except QueueFullError as exc:
            message = f"model is overloaded: {exc}"
            raise _ApiError(429, message, code="overloaded", reason="overloaded") from exc
        seed = req.seed if req.seed is not None else self._seeds.getrandbits(63)
        completion = complete(
            req.prompt, seed=seed, max_tokens=max_tokens, stop=req.stop, include_stop=api == "tgi"
        )
        prefix = "chatcmpl" if api == "chat" else "cmpl"
        return _Job(api, req, completion, seed, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def _max_tokens(self, req: GenerationRequest) -> int:
        room = self.config.max_context - req.prompt_tokens
        if req.max_tokens is None and room >= 1:
            return min(self.config.default_max_tokens, room)
        wanted = req.max_tokens or 1
        if wanted > room:
            raise _ApiError(
                400,
                f"this model's maximum context length is {self.config.max_context} tokens; "
                f"the request asks for {req.prompt_tokens + wanted} tokens "
                f"({req.prompt_tokens} in the prompt, {wanted} to generate)",
                code="context_length_exceeded",
                reason="validation",
            )
        return wanted

    def _producer(self, job: _Job) -> Produce:
        if job.api == "tgi":
            return self._tgi_stream(job) if job.request.stream else self._tgi_whole(job)
        return self._openai_stream(job) if job.request.stream else self._openai_whole(job)

    def _run(self, job: _Job, on_token: OnToken | None) -> Awaitable[RunTimes]:
        return self.engine.run(
            prompt_tokens=job.request.prompt_tokens,
            generated_tokens=job.completion.generated_tokens,
            on_token=on_token,
        )

    def _openai_whole(self, job: _Job) -> Produce:
        build = render.chat_completion if job.api == "chat" else render.text_completion

        async def produce(send: Send) -> None:
            await self._run(job, None)
            body = build(
                request_id=job.request_id,
                created=job.created,
                model=self.config.model_id,
                completion=job.completion,
                prompt_tokens=job.request.prompt_tokens,
            )
            await send_start(send, 200, JSON_HEADERS)
            await send_body(send, body, more=False)

        return produce

    def _openai_stream(self, job: _Job) -> Produce:
        completion = job.completion
        kind: Literal["chat", "text"] = "chat" if job.api == "chat" else "text"
        sse = render.OpenAIStream(
            kind=kind, request_id=job.request_id, created=job.created, model=self.config.model_id
        )

        async def produce(send: Send) -> None:
            async def on_token(index: int) -> None:
                chunk = sse.opening() if index == 0 else b""
                if completion.pieces[index]:
                    chunk += sse.token(render.piece_json(completion, index))
                if chunk:
                    await send_body(send, chunk, more=True)

            await send_start(send, 200, SSE_HEADERS)
            await self._run(job, on_token)
            usage = (
                render.usage(job.request.prompt_tokens, completion)
                if job.request.include_usage
                else None
            )
            await send_body(send, sse.closing(completion.finish_reason, usage), more=False)

        return produce

    def _tgi_whole(self, job: _Job) -> Produce:
        async def produce(send: Send) -> None:
            await self._run(job, None)
            body = render.tgi_generate(
                job.completion, seed=job.seed, with_tokens=job.request.details
            )
            await send_start(send, 200, JSON_HEADERS)
            await send_body(send, body, more=False)

        return produce

    def _tgi_stream(self, job: _Job) -> Produce:
        completion, seed, length = job.completion, job.seed, job.request.prompt_tokens

        async def produce(send: Send) -> None:
            async def on_token(index: int) -> None:
                chunk = render.tgi_stream_token(index, completion, seed=seed, input_length=length)
                await send_body(send, chunk, more=True)

            await send_start(send, 200, SSE_HEADERS)
            await self._run(job, on_token)
            await send_body(send, b"", more=False)

        return produce

    # -- status, metrics, control ------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "loading"}, status_code=503)

    async def info(self, request: Request) -> Response:
        cfg = self.config
        return JSONResponse(
            {
                "model_id": cfg.model_id,
                "model_sha": None,
                "model_dtype": "simulated",
                "model_device_type": "simulated",
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": cfg.slots,
                "max_batch_size": cfg.slots,
                "max_best_of": 1,
                "max_stop_sequences": cfg.max_stop_sequences,
                "max_input_tokens": cfg.max_context - 1,
                "max_total_tokens": cfg.max_context,
                "validation_workers": 1,
                "max_client_batch_size": 1,
                "router": "migserve-sim-engine",
                "version": "0.1.0",
                "sha": None,
                "docker_label": None,
                "sim": self._perf_state(),
            }
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.config.model_id,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "migserve-sim",
                        "max_model_len": self.config.max_context,
                    }
                ],
            }
        )

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def set_speed(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), SpeedBody)
        except RequestError as exc:
            error = _ApiError(400, exc.message, code=exc.code, reason="validation")
            return _error_response("chat", error)
        self.engine.set_speed_factor(body.factor)
        return JSONResponse({"speed_factor": body.factor})

    async def state(self, request: Request) -> Response:
        cfg = self.config
        return JSONResponse(
            {
                "model_id": cfg.model_id,
                "ready": self.ready,
                "slots": cfg.slots,
                "in_flight": self.engine.active,
                "queued": self.engine.queued,
                **self._perf_state(),
                "config": dataclasses.asdict(cfg),
            }
        )

    def _perf_state(self) -> dict[str, Any]:
        perf = self.engine.perf
        return {
            "simulated": True,
            "profile": self.config.profile.name,
            "compute_slices": perf.compute_slices,
            "memory_slices": perf.memory_slices,
            "alpha_ms": perf.alpha_ms,
            "beta_ms": perf.beta_ms,
            "prefill_ms_per_token": perf.prefill_ms_per_token,
            "speed_factor": perf.speed_factor,
            "tpot_ms_now": perf.tpot_ms(self.engine.active),
        }


def _error_response(api: Api, exc: _ApiError) -> Response:
    if api == "tgi":
        error_type = {"model_loading": "unhealthy", "overloaded": "overloaded"}.get(
            exc.code, "validation"
        )
        content: dict[str, Any] = {"error": exc.message, "error_type": error_type}
    else:
        error_type = {
            "model_loading": "unavailable_error",
            "overloaded": "rate_limit_error",
        }.get(exc.code, "invalid_request_error")
        content = {
            "error": {"message": exc.message, "type": error_type, "param": None, "code": exc.code}
        }
    return Response(msgspec.json.encode(content), exc.status, media_type="application/json")


def create_app(config: SimEngineConfig) -> Starlette:
    """A Starlette app that simulates one inference server as ``config`` describes."""
    sim = _SimServer(config)
    routes = [
        Route("/v1/chat/completions", sim.chat_completions, methods=["POST"]),
        Route("/v1/completions", sim.completions, methods=["POST"]),
        Route("/generate", sim.generate, methods=["POST"]),
        Route("/generate_stream", sim.generate_stream, methods=["POST"]),
        Route("/health", sim.health, methods=["GET"]),
        Route("/info", sim.info, methods=["GET"]),
        Route("/v1/models", sim.models, methods=["GET"]),
        Route("/metrics", sim.metrics_text, methods=["GET"]),
        Route("/sim/speed", sim.set_speed, methods=["POST"]),
        Route("/sim/state", sim.state, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sim = sim
    return app
