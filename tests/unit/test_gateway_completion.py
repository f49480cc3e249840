"""/v1/completions and the TGI routes in process: bodies, streams, and bad input (tables)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_gateway_http import MODEL, J, gateway

COMPLETIONS = "/v1/completions"


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once", **fields}


# (path, request kwargs, status, reason, words); TGI answers {"error", "error_type"}
BAD_INPUT: list[tuple[str, dict[str, Any], int, str, str]] = [
    (COMPLETIONS, {"content": b"{nope", "headers": J}, 400, "malformed_json", "not valid JSON"),
    (COMPLETIONS, {"json": {"model": MODEL}}, 400, "missing_field", "'prompt'"),
    (COMPLETIONS, {"json": completion(prompt=3)}, 400, "wrong_type", "'prompt'"),
    (COMPLETIONS, {"json": completion(prompt="")}, 400, "empty_prompt", "empty"),
    (COMPLETIONS, {"json": completion(prompt=["a", "b"])}, 400, "unsupported_param", "one"),
    (COMPLETIONS, {"json": completion(n=2)}, 400, "unsupported_param", "n=2"),
    (COMPLETIONS, {"json": completion(best_of=3)}, 400, "unsupported_param", "best_of=3"),
    (COMPLETIONS, {"json": completion(echo=True)}, 400, "unsupported_param", "echo"),
    (COMPLETIONS, {"json": completion(max_tokens=-1)}, 400, "max_tokens", "100"),
    (COMPLETIONS, {"json": completion(temperature=9)}, 400, "invalid_value", "temperature"),
    (COMPLETIONS, {"json": completion(prompt="x" * 1001)}, 400, "prompt_too_long", "1000"),
    (COMPLETIONS, {"json": completion(model="no/such")}, 404, "unknown_model", "no/such"),
    ("/generate", {"json": {"inputs": ""}}, 400, "empty_prompt", "inputs"),
    ("/generate", {"json": {"prompt": "x"}}, 400, "missing_field", "'inputs'"),
    (
        "/generate",
        {"json": {"inputs": "x", "parameters": {"max_new_tokens": 101}}},
        400,
        "max_tokens",
        "max_new_tokens",
    ),
    ("/generate_stream", {"json": {"inputs": "x" * 1001}}, 400, "prompt_too_long", "1000"),
    ("/", {"content": b'{"inputs":"\xff"}', "headers": J}, 400, "non_utf8", "UTF-8"),
    ("/generate", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, "", "text"),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "reason", "words"), BAD_INPUT)
async def test_bad_input(
    path: str, kwargs: dict[str, Any], status: int, reason: str, words: str
) -> None:
    async with gateway() as gw:
        r = await gw.client.post(path, **kwargs)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        if path == COMPLETIONS:
            assert set(error) == {"message", "type", "param", "code"}
            assert words in error["message"]
        else:
            assert r.json()["error_type"] == "validation"
            assert words in error
        if reason:
            assert await gw.metric("migserve_gateway_bad_requests_total", reason=reason) == 1
        assert gw.jobs.jobs == []
        ok = await gw.client.post(COMPLETIONS, json=completion())
        assert ok.json()["choices"][0]["text"] == "Hello world"


async def test_completion_bodies_and_stream() -> None:
    async with gateway() as gw:
        r = await gw.client.post(COMPLETIONS, json=completion(max_tokens=4, stop="."))
        body = r.json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert body["choices"] == [
            {"text": "Hello world", "index": 0, "logprobs": None, "finish_reason": "stop"}
        ]
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        job = gw.jobs.jobs[-1]
        assert (job.api, job.prompt, job.params.max_tokens, job.params.stop) == (
            "completion", "Once", 4, ["."],
        )  # fmt: skip

        r = await gw.client.post(COMPLETIONS, json=completion(stream=True))
        events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " world", ""]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tgi_routes_in_process() -> None:
    async with gateway() as gw:
        r = await gw.client.post("/", json={"inputs": "Hi", "parameters": {"details": True}})
        [one] = r.json()
        assert one["generated_text"] == "Hello world"
        assert one["details"]["finish_reason"] == "eos_token"
        assert one["details"]["generated_tokens"] == 2
        r = await gw.client.post("/", json={"inputs": "Hi", "stream": True})
        events = [json.loads(e[5:]) for e in r.text.split("\n\n") if e]
        assert [e["token"]["special"] for e in events] == [False, False, True]
        assert events[-1]["generated_text"] == "Hello world"
        info = (await gw.client.get("/info")).json()
        assert (info["model_id"], info["max_input_length"]) == (MODEL, 1000)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (COMPLETIONS, completion()),
        (COMPLETIONS, completion(stream=True)),
        ("/generate", {"inputs": "Hi"}),
        ("/generate_stream", {"inputs": "Hi"}),
        ("/", {"inputs": "Hi", "stream": True}),
    ],
)
async def test_ids_travel_into_the_job(path: str, body: dict[str, Any]) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "x-request-id": "req-42"}
    async with gateway() as gw:
        r = await gw.client.post(path, json=body, headers=headers)
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        job = gw.jobs.jobs[-1]
        assert (job.trace_id, job.request_id, job.traceparent) == (
            trace, "req-42", headers["traceparent"],
        )  # fmt: skip
        route = path
        assert await gw.metric(
            "migserve_gateway_requests_total", route=route, model=MODEL, status="200"
        ) == 1  # fmt: skip
