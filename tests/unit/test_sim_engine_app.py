"""The sim engine's HTTP API, in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from migserve_agent.sim_engine import SimEngineConfig, create_app
from migserve_agent.sim_engine.perf import MigProfile
from starlette.applications import Starlette

FAST = {"alpha_ms": 1.0, "beta_ms": 0.0, "prefill_ms_per_token": 0.0}
CHAT = "/v1/chat/completions"

Factory = Callable[..., Starlette]


@pytest.fixture
def make_app() -> Factory:
    def make(**overrides: Any) -> Starlette:
        settings: dict[str, Any] = {"model_id": "sim/test", **FAST, **overrides}
        return create_app(SimEngineConfig(**settings))

    return make


@pytest.fixture
async def client(make_app: Factory) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(make_app()) as c:
        yield c


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def _chat(content: str = "hello there", **body: Any) -> dict[str, Any]:
    return {"model": "sim/test", "messages": [{"role": "user", "content": content}], **body}


def _sse(text: str, *, space: bool = True) -> list[str]:
    prefix = "data: " if space else "data:"
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith(prefix) for e in events), events
    return [e[len(prefix) :] for e in events]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match[1])


async def test_chat_completion(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=_chat(max_tokens=7))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim/test"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}
    assert len(choice["message"]["content"]) > 0


async def test_default_max_tokens(make_app: Factory) -> None:
    async with _client(make_app(default_max_tokens=5)) as client:
        r = await client.post(CHAT, json=_chat())
    assert r.json()["usage"]["completion_tokens"] == 5


async def test_chat_stream_with_usage(client: httpx.AsyncClient) -> None:
    r = await client.post(
        CHAT, json=_chat(max_tokens=6, stream=True, stream_options={"include_usage": True})
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "length"
    assert all(f is None for f in finals[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}
    # streamed text equals the non-streamed text for the same seed
    whole = await client.post(CHAT, json=_chat(max_tokens=6, seed=11))
    streamed = await client.post(CHAT, json=_chat(max_tokens=6, seed=11, stream=True))
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "") for e in _sse(streamed.text)[:-1]
    )
    assert text == whole.json()["choices"][0]["message"]["content"]
    assert len("".join(content)) > 0


async def test_stream_without_usage_has_no_usage_chunk(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=_chat(max_tokens=3, stream=True))
    chunks = [json.loads(e) for e in _sse(r.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_seed_makes_output_deterministic(client: httpx.AsyncClient) -> None:
    async def text(**body: Any) -> str:
        r = await client.post(CHAT, json=_chat(max_tokens=20, **body))
        return str(r.json()["choices"][0]["message"]["content"])

    assert await text(seed=1) == await text(seed=1)
    assert await text(seed=1) != await text(seed=2)
    assert await text(seed=1, temperature=0.7, top_p=0.9) == await text(seed=1)


async def test_stop_sequence(client: httpx.AsyncClient) -> None:
    full = await client.post(CHAT, json=_chat(max_tokens=30, seed=4))
    text = full.json()["choices"][0]["message"]["content"]
    stop = text.split()[4]
    r = await client.post(CHAT, json=_chat(max_tokens=30, seed=4, stop=[stop, "zz-never"]))
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert body["usage"]["completion_tokens"] < 30
    r = await client.post(CHAT, json=_chat(max_tokens=30, seed=4, stop=stop, stream=True))
    chunks = [json.loads(e) for e in _sse(r.text)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == text[: text.index(stop)]


async def test_text_completions(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "seed": 2})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    r = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "seed": 2, "stream": True}
    )
    events = _sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]


async def test_context_length_is_enforced(make_app: Factory) -> None:
    async with _client(make_app(max_context=20, default_max_tokens=8)) as client:
        r = await client.post(CHAT, json=_chat(max_tokens=19))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        r = await client.post(CHAT, json=_chat("word " * 15))  # 19 tokens: 1 left
        assert r.json()["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (CHAT, b"{bad json"),
        (CHAT, b""),
        (CHAT, b'{"model": "m"}'),
        (CHAT, b'{"messages": [{"role": "user", "content": 5}]}'),
        (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}'),
        ("/v1/completions", b'{"max_tokens": 3}'),
        ("/v1/completions", b'{"prompt": "x", "stop": 3}'),
    ],
)
async def test_bad_openai_bodies_get_400_json(
    client: httpx.AsyncClient, path: str, content: bytes
) -> None:
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["code"] in {"invalid_json", "invalid_request"}
    metrics = (await client.get("/metrics")).text
    assert 'tgi_request_failure{err="validation"} 1' in metrics


async def test_tgi_generate(client: httpx.AsyncClient) -> None:
    body = {"inputs": "hi there", "parameters": {"max_new_tokens": 5, "seed": 9, "details": True}}
    r = await client.post("/generate", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["details"]["finish_reason"] == "length"
    assert out["details"]["generated_tokens"] == 5
    assert out["details"]["seed"] == 9
    assert "".join(t["text"] for t in out["details"]["tokens"]) == out["generated_text"]


async def test_tgi_generate_stream(client: httpx.AsyncClient) -> None:
    body = {"inputs": "hi there", "parameters": {"max_new_tokens": 5, "seed": 9}}
    r = await client.post("/generate_stream", json=body)
    assert r.status_code == 200
    events = [json.loads(e) for e in _sse(r.text, space=False)]
    assert len(events) == 5
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5]
    for e in events:
        assert set(e["token"]) == {"id", "text", "logprob", "special"}
        assert e["token"]["special"] is False
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert events[-1]["details"]["finish_reason"] == "length"
    assert events[-1]["details"]["generated_tokens"] == 5
    whole = await client.post("/generate", json=body)
    assert whole.json()["generated_text"] == events[-1]["generated_text"]


async def test_tgi_stop_sequence_keeps_the_stop(client: httpx.AsyncClient) -> None:
    body: dict[str, Any] = {"inputs": "x", "parameters": {"max_new_tokens": 30, "seed": 1}}
    text = (await client.post("/generate", json=body)).json()["generated_text"]
    stop = text.split()[3]
    body["parameters"]["stop"] = [stop]
    out = (await client.post("/generate", json=body)).json()
    assert out["details"]["finish_reason"] == "stop_sequence"
    assert stop in out["generated_text"]
    assert text.startswith(out["generated_text"])


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{oops", 400), (b'{"inputs": ""}', 422), (b'{"inputs": "x", "parameters": 3}', 422)],
)
async def test_bad_tgi_bodies(client: httpx.AsyncClient, content: bytes, status: int) -> None:
    r = await client.post("/generate", content=content)
    assert r.status_code == status
    assert r.json()["error_type"] == "validation"
    assert r.json()["error"]


async def test_info_models_health(client: httpx.AsyncClient) -> None:
    info = (await client.get("/info")).json()
    assert info["model_id"] == "sim/test"
    assert info["max_concurrent_requests"] == 8
    assert info["sim"]["simulated"] is True
    models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["sim/test"]
    health = await client.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_loading_then_ready(make_app: Factory) -> None:
    async with _client(make_app(startup_delay_s=0.5)) as client:
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        r = await client.post(CHAT, json=_chat(max_tokens=2))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_loading"
        r = await client.post("/generate", json={"inputs": "x"})
        assert r.status_code == 503
        for _ in range(100):
            await asyncio.sleep(0.05)
            health = await client.get("/health")
            if health.status_code == 200:
                break
        assert health.json() == {"status": "ok"}
        assert (await client.post(CHAT, json=_chat(max_tokens=2))).status_code == 200


@pytest.mark.parametrize("fault", ["never_healthy", "fail_start"])
async def test_injected_start_faults_never_become_healthy(make_app: Factory, fault: str) -> None:
    async with _client(make_app(startup_delay_s=0.0, **{fault: True})) as client:
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        assert (await client.post(CHAT, json=_chat(max_tokens=2))).status_code == 503


async def test_metrics_series_and_counters(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    for name in (
        "tgi_request_mean_time_per_token_duration_bucket",
        "tgi_request_duration_bucket",
        "tgi_request_queue_duration_bucket",
        "tgi_request_generated_tokens_bucket",
        "# TYPE tgi_queue_size gauge",
        "# TYPE tgi_batch_current_size gauge",
        "# TYPE tgi_request_count counter",
        "# TYPE tgi_request_success counter",
        "# TYPE tgi_request_failure counter",
    ):
        assert name in before
    assert _metric(before, "tgi_request_count") == 0
    await client.post(CHAT, json=_chat(max_tokens=4))
    await client.post("/generate_stream", json={"inputs": "x", "parameters": {"max_new_tokens": 3}})
    await client.post(CHAT, content=b"nope")
    after = (await client.get("/metrics")).text
    assert _metric(after, "tgi_request_count") == 3
    assert _metric(after, "tgi_request_success") == 2
    assert _metric(after, 'tgi_request_failure{err="validation"}') == 1
    assert _metric(after, "tgi_request_generated_tokens_sum") == 7
    assert _metric(after, "tgi_request_mean_time_per_token_duration_count") == 2
    assert _metric(after, "tgi_request_mean_time_per_token_duration_sum") > 0
    assert _metric(after, "tgi_batch_current_size") == 0
    assert _metric(after, "tgi_queue_size") == 0


async def test_apps_have_separate_registries(make_app: Factory) -> None:
    async with _client(make_app()) as a, _client(make_app()) as b:
        await a.post(CHAT, json=_chat(max_tokens=1))
        assert _metric((await a.get("/metrics")).text, "tgi_request_count") == 1
        assert _metric((await b.get("/metrics")).text, "tgi_request_count") == 0


async def _wait_for_state(client: httpx.AsyncClient, **expected: int) -> dict[str, Any]:
    for _ in range(400):
        state: dict[str, Any] = (await client.get("/sim/state")).json()
        if all(state[k] == v for k, v in expected.items()):
            return state
        await asyncio.sleep(0.005)
    raise AssertionError(f"state never reached {expected}: {state}")


async def test_one_slot_runs_requests_one_after_the_other(make_app: Factory) -> None:
    app = make_app(slots=1, alpha_ms=10.0)
    async with _client(app) as client:
        done: list[str] = []

        async def ask(name: str) -> httpx.Response:
            r = await client.post(CHAT, json=_chat(max_tokens=10))
            done.append(name)
            return r

        first = asyncio.create_task(ask("first"))
        await _wait_for_state(client, in_flight=1, queued=0)
        second = asyncio.create_task(ask("second"))
        state = await _wait_for_state(client, in_flight=1, queued=1)
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "tgi_queue_size") == 1
        assert _metric(metrics, "tgi_batch_current_size") == 1
        assert state["slots"] == 1
        responses = await asyncio.gather(first, second)
        assert [r.status_code for r in responses] == [200, 200]
        assert done == ["first", "second"]
        metrics = (await client.get("/metrics")).text
        # the second request waited for the first's whole generation (10 tokens x >= 10 ms)
        assert _metric(metrics, "tgi_request_queue_duration_sum") >= 0.05


async def test_full_queue_answers_429(make_app: Factory) -> None:
    async with _client(make_app(slots=1, max_queue=0, alpha_ms=10.0)) as client:
        first = asyncio.create_task(client.post(CHAT, json=_chat(max_tokens=10)))
        await _wait_for_state(client, in_flight=1)
        r = await client.post(CHAT, json=_chat(max_tokens=1))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "overloaded"
        r = await client.post("/generate", json={"inputs": "x"})
        assert r.json()["error_type"] == "overloaded"
        assert (await first).status_code == 200


async def test_speed_change_makes_tpot_larger(client: httpx.AsyncClient) -> None:
    state = (await client.get("/sim/state")).json()
    assert state["speed_factor"] == 1.0
    await client.post(CHAT, json=_chat(max_tokens=5))
    metrics = (await client.get("/metrics")).text
    fast_mean = _metric(metrics, "tgi_request_mean_time_per_token_duration_sum")

    r = await client.post("/sim/speed", json={"factor": 20})
    assert r.json() == {"speed_factor": 20}
    state = (await client.get("/sim/state")).json()
    assert state["speed_factor"] == 20
    assert state["tpot_ms_now"] == pytest.approx(20.0)  # (alpha 1 ms + beta 0) x 20

    await client.post(CHAT, json=_chat(max_tokens=5))
    metrics = (await client.get("/metrics")).text
    slow_mean = _metric(metrics, "tgi_request_mean_time_per_token_duration_sum") - fast_mean
    assert slow_mean > 2 * fast_mean


@pytest.mark.parametrize("content", [b"{}", b'{"factor": 0}', b'{"factor": "x"}', b"nope"])
async def test_bad_speed_bodies(client: httpx.AsyncClient, content: bytes) -> None:
    r = await client.post("/sim/speed", content=content)
    assert r.status_code == 400
    assert r.json()["error"]["message"]


def test_config_validation() -> None:
    bad: dict[str, Any]
    for bad in (
        {"slots": 0},
        {"speed_factor": 0.0},
        {"startup_delay_s": -1.0},
        {"default_max_tokens": 0},
        {"max_context": 1},
        {"model_id": ""},
    ):
        with pytest.raises(ValueError, match="must"):
            SimEngineConfig(**bad)
    with pytest.raises(ValueError, match="compute_slices"):
        MigProfile("9g.1gb", 9, 8)
