"""Engine request mapping: routes and bodies per engine kind, from InferenceJobs."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from migserve_agent.bridge.dialect import (
    ENGINE_KINDS,
    dialect_for,
    normalize_finish_reason,
)
from migserve_shared.messages import ChatMessage, InferenceJob, SamplingParams

MODEL = "org/model:v1"


def job(**kw: Any) -> InferenceJob:
    base: dict[str, Any] = {
        "job_id": "j1",
        "model": MODEL,
        "reply_to": "_INBOX.x.y",
        "deadline": 1e12,
        "messages": [ChatMessage("user", "hi")],
    }
    return InferenceJob(**{**base, **kw})


USAGE = {"include_usage": True}


@pytest.mark.parametrize(
    ("kind", "the_job", "route", "body"),
    [
        pytest.param(
            "sim",
            job(),
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 256,
            },
            id="chat defaults: unset params are left out",
        ),
        pytest.param(
            "vllm",
            job(
                messages=[ChatMessage("system", "be brief"), ChatMessage("user", "hi")],
                params=SamplingParams(
                    max_tokens=5, temperature=0.0, top_p=0.9, seed=7, stop=["\n", "END"]
                ),
            ),
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ],
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 5,
                "temperature": 0.0,
                "top_p": 0.9,
                "seed": 7,
                "stop": ["\n", "END"],
            },
            id="chat with every parameter",
        ),
        pytest.param(
            "llamacpp",
            job(api="completion", messages=[], prompt="Once upon", params=SamplingParams(seed=0)),
            "/v1/completions",
            {
                "model": MODEL,
                "prompt": "Once upon",
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 256,
                "seed": 0,
            },
            id="completion",
        ),
        pytest.param(
            "tgi",
            job(params=SamplingParams(max_tokens=3, top_p=1.0)),
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 3,
            },
            id="tgi drops top_p of 1",
        ),
        pytest.param(
            "tgi",
            job(params=SamplingParams(max_tokens=3, top_p=0.5)),
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 3,
                "top_p": 0.5,
            },
            id="tgi keeps top_p below 1",
        ),
        pytest.param(
            "vllm",
            job(params=SamplingParams(top_p=1.0)),
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": USAGE,
                "max_tokens": 256,
                "top_p": 1.0,
            },
            id="others keep top_p of 1",
        ),
    ],
)
def test_request_mapping(
    kind: str, the_job: InferenceJob, route: str, body: dict[str, Any]
) -> None:
    dialect = dialect_for(kind)
    assert dialect.kind == kind
    assert dialect.route(the_job.api) == route
    assert msgspec.json.decode(dialect.request_body(the_job)) == body


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_every_kind_has_a_health_route_and_a_fresh_parser(kind: str) -> None:
    dialect = dialect_for(kind)
    assert dialect.health_path == "/health"
    assert dialect.new_parser() is not dialect.new_parser()


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="'ollama'"):
        dialect_for("ollama")


@pytest.mark.parametrize(
    ("raw", "mapped"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("eos_token", "stop"),
        ("stop_sequence", "stop"),
        ("content_filter", "stop"),
        ("tool_calls", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons_map_to_the_job_protocol(raw: str | None, mapped: str) -> None:
    assert normalize_finish_reason(raw) == mapped
