"""The gateway's HTTP API in process (httpx ASGI transport), NATS replaced at our seam.

``FakeJobs`` implements the ``JobClient`` Protocol: it records jobs, cancels
and demand, and answers each job with the replies a test scripts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import msgspec
import pytest
from migserve_gateway.adapters.backend import Backend
from migserve_gateway.adapters.jobs import JobQueueUnavailableError
from migserve_gateway.adapters.registry import ModelExistsError
from migserve_gateway.api.fastpath import HOT_PATHS
from migserve_gateway.app import create_app
from migserve_gateway.core.auth import AuthKeys
from migserve_gateway.core.view import LiveView
from migserve_gateway.settings import GatewaySettings
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    Demand,
    InferenceJob,
    InstanceRecord,
    JobAccepted,
    JobEnd,
    JobError,
    JobReply,
    ModelSpec,
    TokenChunk,
)
from starlette.types import Receive, Scope, Send

MODEL = "org/model-1"
CHAT = "/v1/chat/completions"
SETTINGS = GatewaySettings(
    gateway_id="gw-test",
    cold_start_timeout_s=0.3,
    queue_timeout_s=0.3,
    token_idle_timeout_s=0.3,
    max_body_bytes=4096,
    default_max_tokens=16,
    max_tokens_limit=100,
    max_prompt_chars=1000,
    demand_interval_s=0.05,
    auth_disabled=True,
)

Script = Callable[[InferenceJob], list[JobReply]]


def tokens(*texts: str, prompt: int = 3) -> Script:
    def script(job: InferenceJob) -> list[JobReply]:
        out: list[JobReply] = [JobAccepted(instance_id="i1")]
        out += [TokenChunk(text=t, index=i) for i, t in enumerate(texts)]
        return [*out, JobEnd(prompt_tokens=prompt, completion_tokens=len(texts))]

    return script


def silent(job: InferenceJob) -> list[JobReply]:
    return []


@dataclass
class FakeJobs:
    """The JobClient test double."""

    script: Script = field(default_factory=lambda: tokens("Hello", " world"))
    connected: bool = True
    fail_submit: bool = False
    jobs: list[InferenceJob] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    demands: list[Demand] = field(default_factory=list)
    queues: dict[str, asyncio.Queue[JobReply]] = field(default_factory=dict)

    def open_replies(self) -> tuple[str, asyncio.Queue[JobReply]]:
        reply_to = f"_INBOX.test.{len(self.queues) + len(self.jobs)}"
        queue: asyncio.Queue[JobReply] = asyncio.Queue()
        self.queues[reply_to] = queue
        return reply_to, queue

    def close_replies(self, reply_to: str) -> None:
        del self.queues[reply_to]

    async def submit(self, job: InferenceJob) -> None:
        if self.fail_submit:
            raise JobQueueUnavailableError("nats is down")
        self.jobs.append(job)
        self.reply(job, *self.script(job))

    def reply(self, job: InferenceJob, *replies: JobReply) -> None:
        for r in replies:
            self.queues[job.reply_to].put_nowait(r)

    async def cancel(self, job_id: str) -> None:
        self.cancels.append(job_id)

    async def publish_demand(self, demand: Demand) -> None:
        self.demands.append(demand)


class FakeRegistry:
    """The ModelRegistry test double (a dict), updating the view like the real one."""

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self.specs: dict[str, ModelSpec] = {}
        self.events: list[str] = []

    async def register(self, spec: ModelSpec, *, replace: bool, trace_id: str) -> bool:
        created = spec.model_id not in self.specs
        if not created and not replace:
            raise ModelExistsError(f"model {spec.model_id!r} is already registered")
        self.specs[spec.model_id] = spec
        self.view.put_model(spec)
        self.events.append(f"registered {spec.model_id}")
        return created

    async def get(self, model_id: str) -> ModelSpec | None:
        return self.specs.get(model_id)

    async def list(self) -> list[ModelSpec]:
        return [self.specs[k] for k in sorted(self.specs)]

    async def remove(self, model_id: str, *, trace_id: str) -> bool:
        if self.specs.pop(model_id, None) is None:
            return False
        self.view.drop_model(model_id)
        self.events.append(f"removed {model_id}")
        return True


@dataclass
class Gateway:
    client: httpx.AsyncClient
    jobs: FakeJobs
    view: LiveView
    registry: FakeRegistry

    async def metric(self, name: str, **labels: str) -> float:
        text = (await self.client.get("/metrics")).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m and m[1] == name and ",".join(sorted((m[2] or "").split(","))) == want:
                return float(m[3])
        return 0.0


def ready_instance(model: str = MODEL, iid: str = "i1") -> InstanceRecord:
    return InstanceRecord(
        instance_id=iid, model_id=model, node="n", gpu_index=0, profile="1g.5gb", start=0,
        state="ready",
    )  # fmt: skip


@asynccontextmanager
async def gateway(
    settings: GatewaySettings = SETTINGS, *, ready: bool = True, auth: AuthKeys | None = None
) -> AsyncIterator[Gateway]:
    view = LiveView()
    view.put_model(ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=50))
    if ready:
        view.put_instance("i1", ready_instance())
    jobs = FakeJobs()
    registry = FakeRegistry(view)
    app = create_app(settings, Backend(jobs=jobs, registry=registry, view=view), auth=auth)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})  # what an ASGI server does with lifespan state
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Gateway(client, jobs, view, registry)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with gateway() as g:
        yield g


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def sse(text: str) -> list[Any]:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


# --- bad input: (request kwargs, status, reason, words) ------------------------------------
J = {"content-type": "application/json"}
BAD_INPUT: list[tuple[dict[str, Any], int, str, str]] = [
    ({"content": b"{nope", "headers": J}, 400, "malformed_json", "not valid JSON"),
    ({"content": b'{"model":"\xff"}', "headers": J}, 400, "non_utf8", "UTF-8"),
    ({"json": chat(max_tokens="many")}, 400, "wrong_type", "'max_tokens'"),
    ({"json": chat(model="nope/nope")}, 404, "unknown_model", "nope/nope"),
    ({"json": chat(messages=[])}, 400, "empty_messages", "at least one"),
    ({"json": chat(max_tokens=0)}, 400, "max_tokens", "100"),
    ({"json": chat(max_tokens=101)}, 400, "max_tokens", "100"),
    ({"json": chat(n=3)}, 400, "unsupported_param", "n=3"),
    (
        {"json": chat(messages=[{"role": "user", "content": "x" * 1001}])},
        400,
        "prompt_too_long",
        "limit is 1000 characters",
    ),
    ({"json": chat(messages=[{"role": "x", "content": "y"}])}, 400, "invalid_value", "role"),
    ({"json": chat(pad="x" * 5000)}, 413, "body_too_large", "4096 bytes"),
    (
        {"content": b"x" * 5000, "headers": {"content-type": "application/json"}},
        413,
        "body_too_large",
        "4096",
    ),
    ({"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, "content_type", "text"),
    ({"data": {"model": MODEL}}, 415, "content_type", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize(("kwargs", "status", "reason", "words"), BAD_INPUT)
async def test_bad_input_is_an_openai_error_and_counted(
    gw: Gateway, kwargs: dict[str, Any], status: int, reason: str, words: str
) -> None:
    r = await gw.client.post(CHAT, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    assert await gw.metric("migserve_gateway_bad_requests_total", reason=reason) == 1
    assert await gw.metric(
        "migserve_gateway_requests_total", route=CHAT, model="", status=str(status)
    ) == 1  # fmt: skip
    assert gw.jobs.jobs == []


async def test_chunked_body_over_the_limit_is_413(gw: Gateway) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    r = await gw.client.post(CHAT, content=body(), headers=J)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"


async def test_unknown_route_and_method_are_json(gw: Gateway) -> None:
    r = await gw.client.get("/v2/nothing")
    assert (r.status_code, r.json()["error"]["message"]) == (404, "No route GET /v2/nothing")
    r = await gw.client.get(CHAT)
    assert r.status_code == 405
    assert "not allowed" in r.json()["error"]["message"]


# --- the job path ------------------------------------------------------------------------------
async def test_non_streaming_completion(gw: Gateway) -> None:
    r = await gw.client.post(CHAT, json=chat(temperature=0.5, stop="END", seed=1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    [job] = gw.jobs.jobs
    assert (job.model, job.params.max_tokens, job.params.stop) == (MODEL, 16, ["END"])
    assert (job.params.temperature, job.params.seed) == (0.5, 1)
    assert gw.jobs.cancels == [] and gw.jobs.demands == []
    assert gw.jobs.queues == {}  # the reply route was closed
    assert await gw.metric("migserve_gateway_in_flight") == 0
    assert await gw.metric("migserve_gateway_ttft_seconds_count") == 1
    assert await gw.metric("migserve_gateway_inter_token_seconds_count") == 1
    assert await gw.metric(
        "migserve_gateway_requests_total", route=CHAT, model=MODEL, status="200"
    ) == 1  # fmt: skip


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_completion(gw: Gateway, include_usage: bool) -> None:
    gw.jobs.script = tokens("A", "B", "C")
    req = chat(stream=True, stream_options={"include_usage": include_usage})
    r = await gw.client.post(CHAT, json=req)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "ABC"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert usage_chunks[0]["usage"]["completion_tokens"] == 3
        assert usage_chunks[0]["choices"] == []
    else:
        assert usage_chunks == []
    assert gw.jobs.cancels == []


async def test_empty_completion_streams_role_and_end(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [JobEnd(finish_reason="length")]
    events = sse((await gw.client.post(CHAT, json=chat(stream=True))).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["finish_reason"] == "length"
    assert events[2] == "[DONE]"


async def test_ids_travel_with_the_job_and_come_back(gw: Gateway) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "x-request-id": "my-req-1"}
    r = await gw.client.post(CHAT, json=chat(), headers=headers)
    assert r.headers["x-request-id"] == "my-req-1"
    [job] = gw.jobs.jobs
    assert (job.trace_id, job.request_id) == (trace, "my-req-1")
    assert job.traceparent == headers["traceparent"]
    r = await gw.client.post(CHAT, json=chat(), headers={"traceparent": "bogus"})
    new = gw.jobs.jobs[1]
    assert len(new.trace_id) == 32 and new.trace_id != trace
    assert r.headers["x-request-id"] == new.request_id
    assert (await gw.client.get("/health")).headers["x-request-id"]


async def test_error_before_first_token_maps_to_status(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [JobError(code=ErrorCode.ENGINE_FAILED, message="engine died")]
    r = await gw.client.post(CHAT, json=chat(stream=True))
    assert r.status_code == 502
    assert "engine died" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "engine_failed"
    assert len(gw.jobs.jobs) == 1  # not retryable: no second attempt
    assert gw.jobs.cancels == []  # the job ended with its error


async def test_retryable_error_is_retried_once(gw: Gateway) -> None:
    def flaky(job: InferenceJob) -> list[JobReply]:
        if job.attempts == 0:
            return [JobError(code=ErrorCode.ENGINE_UNAVAILABLE, message="gone", retryable=True)]
        return tokens("ok")(job)

    gw.jobs.script = flaky
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "ok"
    assert [j.attempts for j in gw.jobs.jobs] == [0, 1]
    assert len({j.job_id for j in gw.jobs.jobs}) == 1
    assert await gw.metric("migserve_gateway_job_retries_total") == 1

    gw.jobs.jobs.clear()
    gw.jobs.script = lambda job: [
        JobError(code=ErrorCode.ENGINE_UNAVAILABLE, message="still gone", retryable=True)
    ]
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 503
    assert [j.attempts for j in gw.jobs.jobs] == [0, 1]


async def test_error_after_tokens_is_an_sse_error_event(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [
        TokenChunk(text="par"),
        JobError(code=ErrorCode.ENGINE_FAILED, message="oom"),
    ]
    r = await gw.client.post(CHAT, json=chat(stream=True))
    assert r.status_code == 200
    events = sse(r.text)
    assert events[0]["choices"][0]["delta"]["content"] == "par"
    assert "oom" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"  # after the error object, as vLLM ends a failed stream
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 502


@pytest.mark.parametrize(
    "replies",
    [
        # the chunk with token 1 was lost in transit
        [TokenChunk(text="a", index=0, count=1), TokenChunk(text="c", index=2, count=1), JobEnd()],
        # the last chunk was lost: the end marker counts more tokens than arrived
        [TokenChunk(text="a", index=0, count=1), JobEnd(tokens_sent=2)],
    ],
    ids=["gap", "tail"],
)
async def test_lost_token_replies_end_the_answer_with_an_error(
    gw: Gateway, replies: list[JobReply]
) -> None:
    gw.jobs.script = lambda job: [JobAccepted(instance_id="i1"), *replies]
    r = await gw.client.post(CHAT, json=chat(stream=True))
    events = sse(r.text)
    assert "lost in transit" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code >= 500 and "lost in transit" in r.json()["error"]["message"]


async def test_chunks_of_several_tokens_in_order_are_whole(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [
        JobAccepted(instance_id="i1"),
        TokenChunk(text="ab", index=0, count=2),
        TokenChunk(text="c", index=2, count=1),
        JobEnd(completion_tokens=3, tokens_sent=3),
    ]
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "abc"


async def test_stalled_stream_ends_with_error_and_cancel(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [TokenChunk(text="a")]
    r = await gw.client.post(CHAT, json=chat(stream=True))
    events = sse(r.text)
    assert events[-2]["error"]["code"] == "timeout"
    assert events[-1] == "[DONE]"
    assert gw.jobs.cancels == [gw.jobs.jobs[0].job_id]
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 504
    assert gw.jobs.cancels[-1] == gw.jobs.jobs[1].job_id


async def test_queue_unavailable_is_503(gw: Gateway) -> None:
    gw.jobs.fail_submit = True
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 503
    assert "nats is down" in r.json()["error"]["message"]
    assert gw.jobs.queues == {}


# --- cold start ----------------------------------------------------------------------------------
async def test_cold_start_timeout_is_503_and_cancels() -> None:
    async with gateway(ready=False) as g:
        g.jobs.script = silent
        r = await g.client.post(CHAT, json=chat())
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["message"].startswith(f"no instance of {MODEL} became ready within 0.3 s")
        assert err["code"] == "model_not_ready"
        [job] = g.jobs.jobs
        assert g.jobs.cancels == [job.job_id]
        assert job.deadline - job.created == pytest.approx(0.3)
        assert 1 <= len(g.jobs.demands) <= 8  # re-published at most every 0.05 s


async def test_busy_ready_instances_give_queue_timeout() -> None:
    async with gateway(ready=True) as g:
        g.jobs.script = silent
        r = await g.client.post(CHAT, json=chat())
        assert (r.status_code, r.json()["error"]["code"]) == (503, "queue_timeout")
        assert g.jobs.demands == []


async def test_request_is_held_with_demand_until_an_instance_is_ready() -> None:
    settings = replace(SETTINGS, cold_start_timeout_s=5.0)
    async with gateway(settings, ready=False) as g:
        g.jobs.script = silent
        trace = "0af7651916cd43dd8448eb211c80319c"
        headers = {"traceparent": f"00-{trace}-b7ad6b7169203331-01"}
        request = asyncio.create_task(g.client.post(CHAT, json=chat(), headers=headers))
        async with asyncio.timeout(3):
            while len(g.jobs.demands) < 3:  # demand is re-published while the request waits
                await asyncio.sleep(0.01)
        first = g.jobs.demands[0]
        assert (first.model_id, first.trace_id, first.waiting) == (MODEL, trace, 1)
        assert not request.done()
        g.view.put_instance("i9", ready_instance(iid="i9"))  # the instance appears ...
        await asyncio.sleep(0.1)
        published = len(g.jobs.demands)
        g.jobs.reply(
            g.jobs.jobs[0], *tokens("late", " but fine")(g.jobs.jobs[0])
        )  # ... and answers
        r = await request
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "late but fine"
        assert len(g.jobs.demands) == published  # no demand once an instance is ready
        [job] = g.jobs.jobs
        assert job.deadline - job.created == pytest.approx(5.0)


async def test_demand_counts_waiting_requests_once_per_interval() -> None:
    settings = replace(SETTINGS, cold_start_timeout_s=0.2, demand_interval_s=10.0)
    async with gateway(settings, ready=False) as g:
        g.jobs.script = silent
        rs = await asyncio.gather(*(g.client.post(CHAT, json=chat()) for _ in range(3)))
        assert [r.status_code for r in rs] == [503, 503, 503]
        assert len(g.jobs.demands) == 1  # one per interval, however many wait
        assert len(g.jobs.cancels) == 3


# --- models, admin, health, metrics ---------------------------------------------------------------
SPEC = {"model_id": "org/new-model", "memory_mb": 2000, "tpot_slo_ms": 40}


async def test_models_list(gw: Gateway) -> None:
    body = (await gw.client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]


async def test_admin_register_get_list_delete(gw: Gateway) -> None:
    r = await gw.client.post("/v1/admin/models", json=SPEC)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["model_id"] == SPEC["model_id"] and stored["registered_at"] > 0
    assert (await gw.client.post("/v1/admin/models", json=SPEC)).status_code == 409
    r = await gw.client.post("/v1/admin/models", json={**SPEC, "tpot_slo_ms": 30},
                             params={"replace": "true"})  # fmt: skip
    assert (r.status_code, r.json()["tpot_slo_ms"]) == (200, 30)
    got = await gw.client.get("/v1/admin/models/org/new-model")
    assert (got.status_code, got.json()["tpot_slo_ms"]) == (200, 30)
    listed = (await gw.client.get("/v1/admin/models")).json()["data"]
    assert [s["model_id"] for s in listed] == ["org/new-model"]
    ids = [m["id"] for m in (await gw.client.get("/v1/models")).json()["data"]]
    assert "org/new-model" in ids
    assert (await gw.client.delete("/v1/admin/models/org/new-model")).status_code == 204
    assert (await gw.client.delete("/v1/admin/models/org/new-model")).status_code == 404
    assert (await gw.client.get("/v1/admin/models/org/new-model")).status_code == 404
    assert gw.registry.events == [
        "registered org/new-model",
        "registered org/new-model",
        "removed org/new-model",
    ]


BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({**SPEC, "min_profile": "5g.99gb"}, "min_profile"),
    ({**SPEC, "min_replicas": 5, "max_replicas": 1}, "min_replicas"),
    ({**SPEC, "memory_mb": -1}, "memory_mb"),
    ({**SPEC, "mem_mb": 1}, "mem_mb"),
    ({"memory_mb": 1, "tpot_slo_ms": 1}, "model_id"),
]


@pytest.mark.parametrize(("spec", "param"), BAD_SPECS)
async def test_admin_rejects_bad_specs(gw: Gateway, spec: dict[str, Any], param: str) -> None:
    r = await gw.client.post("/v1/admin/models", json=spec)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert gw.registry.specs == {}


async def test_admin_bad_query_and_body(gw: Gateway) -> None:
    r = await gw.client.post("/v1/admin/models", json=SPEC, params={"replace": "perhaps"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "replace")
    r = await gw.client.post("/v1/admin/models", content=b'{"model_id": "\xff"}', headers=J)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "non_utf8")


async def test_health_follows_the_connection(gw: Gateway) -> None:
    r = await gw.client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    gw.jobs.connected = False
    assert (await gw.client.get("/health")).status_code == 503


async def test_metrics_are_served_without_redirect(gw: Gateway) -> None:
    await gw.client.post(CHAT, json=chat())
    r = await gw.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "migserve_gateway_requests_total",
        "migserve_gateway_ttft_seconds_bucket",
        "migserve_gateway_inter_token_seconds_bucket",
        "migserve_gateway_in_flight",
    ):
        assert name in r.text


# --- model misses, lost instances -------------------------------------------------------------
async def test_a_model_missing_from_the_view_is_read_from_the_registry(gw: Gateway) -> None:
    late = ModelSpec(model_id="org/late", memory_mb=1000, tpot_slo_ms=50)
    gw.registry.specs[late.model_id] = late  # stored, but the watch has not delivered it yet
    gw.view.put_instance("i2", ready_instance(model="org/late", iid="i2"))
    r = await gw.client.post(CHAT, json=chat(model="org/late"))
    assert r.status_code == 200, r.text
    assert gw.view.model("org/late") == late  # now in the view: no registry read next time
    r = await gw.client.post(CHAT, json=chat(model="org/absent"))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")


def in_state(state: str, iid: str = "i1") -> InstanceRecord:
    return msgspec.structs.replace(ready_instance(iid=iid), state=state)


@asynccontextmanager
async def mid_stream(stream: bool) -> AsyncIterator[tuple[Gateway, asyncio.Task[httpx.Response]]]:
    """A request whose instance "i1" accepted it and sent one token, then went quiet."""
    async with gateway(replace(SETTINGS, token_idle_timeout_s=5.0)) as g:
        g.jobs.script = lambda job: [JobAccepted(instance_id="i1"), TokenChunk(text="par")]
        task = asyncio.create_task(g.client.post(CHAT, json=chat(stream=stream)))
        async with asyncio.timeout(3):
            while await g.metric("migserve_gateway_ttft_seconds_count") < 1:
                await asyncio.sleep(0.01)
        yield g, task


@pytest.mark.parametrize("state", ["failed", "stopped", None])
async def test_a_lost_instance_ends_its_started_streams(state: str | None) -> None:
    async with mid_stream(stream=True) as (g, task):
        if state is None:
            g.view.drop_instance("i1")  # the record vanished
        else:
            g.view.put_instance("i1", in_state(state))
        r = await task
        events = sse(r.text)
        assert events[0]["choices"][0]["delta"]["content"] == "par"
        assert events[-2]["error"]["code"] == "engine_failed"
        assert "instance i1 failed" in events[-2]["error"]["message"]
        assert events[-1] == "[DONE]"
        assert await g.metric("migserve_gateway_instance_lost_total") == 1
        assert g.jobs.cancels == []  # ended by its error: nothing to cancel


async def test_a_lost_instance_fails_a_collected_answer_with_502() -> None:
    async with mid_stream(stream=False) as (g, task):
        g.view.put_instance("i9", in_state("failed", "i9"))  # another
        g.view.put_instance("i1", in_state("draining"))  # still serving
        await asyncio.sleep(0.05)
        assert not task.done()
        g.view.put_instance("i1", in_state("failed"))
        r = await task
        assert (r.status_code, r.json()["error"]["code"]) == (502, "engine_failed")


async def test_a_lost_instance_before_the_first_token_leaves_the_job_queued(gw: Gateway) -> None:
    gw.jobs.script = lambda job: [JobAccepted(instance_id="i1")]
    task = asyncio.create_task(gw.client.post(CHAT, json=chat()))
    async with asyncio.timeout(2):
        while not gw.jobs.jobs:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)
    gw.view.put_instance("i1", in_state("failed"))
    # JetStream redelivers the unacked job to another instance, which answers in full
    gw.jobs.reply(gw.jobs.jobs[0], *tokens("from", " i2")(gw.jobs.jobs[0]))
    r = await task
    assert r.json()["choices"][0]["message"]["content"] == "from i2"


async def test_inference_routes_take_the_fast_path_and_stay_documented(gw: Gateway) -> None:
    r = await gw.client.post(CHAT, json=chat())
    assert r.status_code == 200
    r = await gw.client.post(CHAT, content=b"{nope", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")
    assert (await gw.client.get(CHAT)).status_code == 405  # other methods: FastAPI as before
    assert (
        await gw.metric("migserve_gateway_requests_total", route=CHAT, model=MODEL, status="200")
        == 1
    )
    paths = (await gw.client.get("/openapi.json")).json()["paths"]
    assert {CHAT, "/v1/completions", "/generate", "/generate_stream"} <= paths.keys()


def test_the_fast_path_covers_every_inference_route() -> None:
    view = LiveView()
    app = create_app(SETTINGS, Backend(jobs=FakeJobs(), registry=FakeRegistry(view), view=view))
    [fast] = [m for m in app.user_middleware if getattr(m.cls, "__name__", "") == "FastRoutes"]
    routes = fast.kwargs["routes"]
    assert isinstance(routes, dict) and set(routes) == HOT_PATHS
