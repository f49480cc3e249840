"""The gateway's pure core: request validation and mapping, ids, rendering, view, demand."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from migserve_gateway.core.chat import RequestLimits, build_job, parse_chat_request
from migserve_gateway.core.demand import DemandBook
from migserve_gateway.core.errors import ApiError, error_body, from_job_error
from migserve_gateway.core.registry import parse_model_spec
from migserve_gateway.core.render import ChunkRenderer, completion_body, model_list_body, usage
from migserve_gateway.core.tracing import parse_traceparent, request_context
from migserve_gateway.core.view import LiveView
from migserve_gateway.settings import settings_from_env
from migserve_shared.errors import ConfigError, ErrorCode
from migserve_shared.messages import ChatMessage, InstanceRecord, ModelSpec, decode_job, encode

LIMITS = RequestLimits(default_max_tokens=16, max_tokens_limit=100)
USER = [{"role": "user", "content": "hi"}]


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **fields}).encode()


# --- bad chat requests: (body, reason, param, words in the message) -------------------
BAD_CHAT: list[tuple[bytes, str, str | None, str]] = [
    (b"{bad", "malformed_json", None, "not valid JSON"),
    (b"", "malformed_json", None, "not valid JSON"),
    (b'{"model":"m\xff","messages":[]}', "non_utf8", None, "UTF-8"),
    (b"[1, 2]", "wrong_type", None, "expected object, got array"),
    (b'{"messages": []}', "missing_field", "model", "'model'"),
    (b'{"model": "m"}', "missing_field", "messages", "'messages'"),
    (_body(model=7), "wrong_type", "model", "expected str, got int"),
    (_body(model=""), "invalid_value", "model", "non-empty"),
    (_body(messages=[]), "empty_messages", "messages", "at least one"),
    (_body(messages="hi"), "wrong_type", "messages", "expected array"),
    (_body(messages=[{"role": "robot", "content": "x"}]), "invalid_value", "messages[0].role", ""),
    (_body(messages=[{"content": "x"}]), "missing_field", "messages[0].role", "role"),
    (_body(messages=[{"role": "user", "content": 5}]), "wrong_type", "messages[0].content", ""),
    (
        _body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        "unsupported_content",
        "messages[0].content[0].type",
        "image_url",
    ),
    (_body(max_tokens="5"), "wrong_type", "max_tokens", "expected int or null, got str"),
    (_body(max_tokens=1.5), "wrong_type", "max_tokens", "got float"),
    (_body(max_tokens=0), "max_tokens", "max_tokens", "between 1 and 100"),
    (_body(max_tokens=101), "max_tokens", "max_tokens", "100"),
    (_body(max_tokens=10**30), "max_tokens", "max_tokens", "100"),
    (_body(max_completion_tokens=0), "max_tokens", "max_completion_tokens", "100"),
    (_body(temperature=2.5), "invalid_value", "temperature", "between 0 and 2"),
    (_body(temperature=-1), "invalid_value", "temperature", ""),
    (_body(temperature="hot"), "wrong_type", "temperature", ""),
    (_body(top_p=0), "invalid_value", "top_p", ""),
    (_body(top_p=1.5), "invalid_value", "top_p", ""),
    (_body(seed=2**70), "invalid_value", "seed", "64-bit"),
    (_body(stop=["a", "b", "c", "d", "e"]), "invalid_value", "stop", "at most 4"),
    (_body(stop=[1]), "wrong_type", "stop[0]", ""),
    (_body(n=2), "unsupported_param", "n", "n=2 is not supported"),
    (_body(n=0), "invalid_value", "n", ""),
    (_body(stream="yes"), "wrong_type", "stream", "expected bool"),
    (_body(stream_options={"include_usage": 1}), "wrong_type", "stream_options.include_usage", ""),
]


@pytest.mark.parametrize(("body", "reason", "param", "words"), BAD_CHAT)
def test_bad_chat_request_names_the_problem(
    body: bytes, reason: str, param: str | None, words: str
) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body, LIMITS)
    err = info.value
    assert (err.status, err.reason, err.param) == (400, reason, param), err.message
    assert words in err.message
    detail = json.loads(error_body(err))["error"]
    assert set(detail) == {"message", "type", "param", "code"}
    assert detail["type"] == "invalid_request_error"


# --- good chat requests: (fields, expected mapping) --------------------------------------
GOOD_CHAT: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"max_tokens": 16, "stop": [], "stream": False, "include_usage": False}),
    ({"max_tokens": 100}, {"max_tokens": 100}),
    ({"max_tokens": 5, "max_completion_tokens": 7}, {"max_tokens": 7}),
    ({"max_tokens": None}, {"max_tokens": 16}),
    ({"stop": "END"}, {"stop": ["END"]}),
    ({"stop": ["a", ""]}, {"stop": ["a"]}),
    ({"temperature": 0, "top_p": 1, "seed": -3}, {"temperature": 0.0, "top_p": 1.0, "seed": -3}),
    ({"stream": True}, {"stream": True, "include_usage": False}),
    ({"stream": True, "stream_options": {"include_usage": True}}, {"include_usage": True}),
    ({"stream": False, "stream_options": {"include_usage": True}}, {"include_usage": False}),
    ({"n": 1, "user": "x", "frequency_penalty": 0.5, "logit_bias": {}}, {"max_tokens": 16}),
]


@pytest.mark.parametrize(("fields", "expected"), GOOD_CHAT)
def test_good_chat_request_maps_to_call(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    call = parse_chat_request(_body(**fields), LIMITS)
    got = {
        "max_tokens": call.params.max_tokens,
        "stop": call.params.stop,
        "temperature": call.params.temperature,
        "top_p": call.params.top_p,
        "seed": call.params.seed,
        "stream": call.stream,
        "include_usage": call.include_usage,
    }
    assert {k: got[k] for k in expected} == expected


def test_messages_map_to_chat_messages_and_job_round_trips() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]
    call = parse_chat_request(_body(messages=messages), LIMITS)
    assert call.messages == [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "ab"),
        ChatMessage("assistant", ""),
    ]
    job = build_job(
        call,
        job_id="job-1",
        reply_to="_INBOX.x.y",
        deadline=10.0,
        created=1.0,
        trace_id="t" * 32,
        traceparent="tp",
        request_id="r",
    )
    assert decode_job(encode(job)) == job
    assert (job.model, job.params.max_tokens, job.attempts) == ("m", 16, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["model", "messages", "role", "content", "max_tokens", "stop", "n"]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_any_json_body_gives_a_call_or_an_api_error(value: Any) -> None:
    try:
        body = json.dumps(value).encode()
    except ValueError:
        return
    try:
        parse_chat_request(body, LIMITS)
    except ApiError as err:
        assert 400 <= err.status < 500


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_call_or_an_api_error(body: bytes) -> None:
    try:
        parse_chat_request(body, LIMITS)
    except ApiError as err:
        assert err.status == 400


# --- trace ids ------------------------------------------------------------------------
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENTS: list[tuple[str | None, str | None]] = [
    (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
    (f"00-{TRACE.upper()}-00F067AA0BA902B7-00", TRACE),
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ("garbage", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("header", "trace_id"), TRACEPARENTS)
def test_traceparent(header: str | None, trace_id: str | None) -> None:
    assert parse_traceparent(header) == trace_id
    ctx = request_context(header, None)
    if trace_id:
        assert ctx.trace_id == trace_id
    else:
        assert len(ctx.trace_id) == 32 and ctx.trace_id != TRACE
        assert parse_traceparent(ctx.traceparent) == ctx.trace_id


@pytest.mark.parametrize(
    ("given_id", "kept"),
    [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("has space", False), ("", False)],
)
def test_request_id_is_kept_only_when_sane(given_id: str, kept: bool) -> None:
    ctx = request_context(None, given_id)
    assert (ctx.request_id == given_id) is kept
    assert ctx.request_id


# --- rendering ---------------------------------------------------------------------------
def _events(raw: bytes) -> list[Any]:
    parts = [p for p in raw.decode().split("\n\n") if p]
    assert all(p.startswith("data: ") for p in parts)
    return [p[6:] if p == "data: [DONE]" else json.loads(p[6:]) for p in parts]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunks_are_openai_chunks(include_usage: bool) -> None:
    r = ChunkRenderer(completion_id="c1", created=5, model="org/m", include_usage=include_usage)
    raw = r.token('he said "hi"\n', first=True) + r.token(" ok") + r.end("length", usage(3, 2))
    events = _events(raw)
    assert events[-1] == "[DONE]"
    first, second, final = events[0], events[1], events[2]
    for chunk in (first, second, final):
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["model"], chunk["created"]) == ("c1", "org/m", 5)
        assert ("usage" in chunk) is include_usage
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": 'he said "hi"\n'}
    assert second["choices"][0]["delta"] == {"content": " ok"}
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    if include_usage:
        assert events[3]["choices"] == []
        assert events[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        assert len(events) == 5
    else:
        assert len(events) == 4


def test_completion_and_model_list_bodies() -> None:
    body = json.loads(
        completion_body(
            completion_id="c",
            created=1,
            model="m",
            text="hello",
            finish_reason="stop",
            used=usage(2, 1),
        )
    )
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"]["total_tokens"] == 3
    spec = ModelSpec(model_id="a/b", memory_mb=1, tpot_slo_ms=1, registered_at=7.9)
    assert json.loads(model_list_body([spec])) == {
        "object": "list",
        "data": [{"id": "a/b", "object": "model", "created": 7, "owned_by": "migserve"}],
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.BAD_REQUEST, 400),
        (ErrorCode.UNKNOWN_MODEL, 404),
        (ErrorCode.ENGINE_UNAVAILABLE, 503),
        (ErrorCode.DRAINING, 503),
        (ErrorCode.TIMEOUT, 504),
        (ErrorCode.ENGINE_FAILED, 502),
        (ErrorCode.INTERNAL, 502),
    ],
)
def test_job_errors_map_to_statuses(code: ErrorCode, status: int) -> None:
    err = from_job_error(code, "boom", "m")
    assert (err.status, err.code) == (status, code.value)
    assert "boom" in err.message


# --- model specs ---------------------------------------------------------------------------
SPEC = {"model_id": "org/m", "memory_mb": 1000, "tpot_slo_ms": 50}
BAD_SPECS: list[tuple[dict[str, Any], str | None, str]] = [
    ({**SPEC, "min_profile": "9g.99gb"}, "min_profile", "not a MIG profile"),
    ({**SPEC, "max_profile": "huge"}, "max_profile", "not a MIG profile"),
    ({**SPEC, "min_replicas": 3, "max_replicas": 2}, "min_replicas", "greater than"),
    ({**SPEC, "min_profile": "7g.40gb", "max_profile": "1g.5gb"}, "min_profile", "larger"),
    ({**SPEC, "memory_mb": "lots"}, "memory_mb", "expected int"),
    ({**SPEC, "memory_mb": 0}, "memory_mb", ">= 1"),
    ({**SPEC, "engine": "magic"}, "engine", "Invalid enum value"),
    ({**SPEC, "model_id": "has space"}, "model_id", "matching regex"),
    ({**SPEC, "colour": "red"}, "colour", "Unknown parameter"),
    ({"memory_mb": 1, "tpot_slo_ms": 1}, "model_id", "Missing"),
]


@pytest.mark.parametrize(("spec", "param", "words"), BAD_SPECS)
def test_bad_model_spec(spec: dict[str, Any], param: str | None, words: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_model_spec(json.dumps(spec).encode())
    assert (info.value.status, info.value.param) == (400, param), info.value.message
    assert words in info.value.message


def test_good_model_spec() -> None:
    spec = parse_model_spec(
        json.dumps({**SPEC, "min_profile": "1g.10gb", "max_profile": "7g.80gb"}).encode()
    )
    assert spec == msgspec.convert(
        {**SPEC, "min_profile": "1g.10gb", "max_profile": "7g.80gb"}, ModelSpec
    )


# --- live view and demand ----------------------------------------------------------------------
def _instance(iid: str, model: str, state: str) -> InstanceRecord:
    return msgspec.convert(
        {
            "instance_id": iid,
            "model_id": model,
            "node": "n",
            "gpu_index": 0,
            "profile": "1g.5gb",
            "start": 0,
            "state": state,
        },
        InstanceRecord,
    )


def test_view_counts_ready_instances() -> None:
    view = LiveView()
    steps: list[tuple[str, str, str | None, dict[str, int]]] = [
        ("i1", "a", "starting", {}),
        ("i1", "a", "ready", {"a": 1}),
        ("i2", "a", "ready", {"a": 2}),
        ("i3", "b", "ready", {"a": 2, "b": 1}),
        ("i1", "a", "draining", {"a": 1, "b": 1}),
        ("i2", "a", None, {"b": 1}),
        ("i3", "b", "failed", {}),
        ("i9", "z", None, {}),
    ]
    for iid, model, state, expected in steps:
        if state is None:
            view.drop_instance(iid)
        else:
            view.put_instance(iid, _instance(iid, model, state))
        assert view.ready_models() == expected, (iid, state)


def test_view_models() -> None:
    view = LiveView()
    for mid in ("b/2", "a/1"):
        view.put_model(ModelSpec(model_id=mid, memory_mb=1, tpot_slo_ms=1))
    assert [m.model_id for m in view.models()] == ["a/1", "b/2"]
    view.drop_model("a/1")
    assert view.model("a/1") is None
    assert view.model("b/2") is not None


def test_demand_is_due_once_per_interval_while_requests_wait() -> None:
    book = DemandBook(interval_s=2.0)
    assert not book.due("m", 0.0)  # nobody waits
    book.enter("m")
    book.enter("m")
    assert book.waiting("m") == 2
    timeline = [(0.0, True), (0.5, False), (1.9, False), (2.0, True), (2.1, False), (4.5, True)]
    for now, due in timeline:
        assert book.due("m", now) is due, now
    assert book.due("other", 0.0) is False
    book.leave("m")
    assert not book.due("m", 5.0)
    book.leave("m")
    assert book.waiting("m") == 0
    book.enter("m")
    assert book.due("m", 5.0)  # a new wait starts a new story at once


# --- settings --------------------------------------------------------------------------------
def test_settings_defaults() -> None:
    s = settings_from_env({})
    assert (s.host, s.port, s.cold_start_timeout_s, s.token_idle_timeout_s) == (
        "127.0.0.1",
        8080,
        120.0,
        60.0,
    )
    assert (s.max_body_bytes, s.default_max_tokens, s.max_tokens_limit) == (1 << 20, 256, 4096)
    assert s.demand_interval_s == 2.0
    assert s.gateway_id


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MIGSERVE_GATEWAY_PORT": "http"}, "MIGSERVE_GATEWAY_PORT='http'"),
        ({"MIGSERVE_GATEWAY_PORT": "70000"}, "MIGSERVE_GATEWAY_PORT"),
        ({"MIGSERVE_COLD_START_TIMEOUT_S": "-1"}, "MIGSERVE_COLD_START_TIMEOUT_S"),
        ({"MIGSERVE_MAX_BODY_BYTES": "1e6"}, "MIGSERVE_MAX_BODY_BYTES"),
        ({"MIGSERVE_DEFAULT_MAX_TOKENS": "500", "MIGSERVE_MAX_TOKENS_LIMIT": "100"}, "above"),
        ({"MIGSERVE_NATS_URL": "http://x"}, "MIGSERVE_NATS_URL"),
        ({"MIGSERVE_LOG_LEVEL": "loud"}, "MIGSERVE_LOG_LEVEL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        settings_from_env(env)


def test_port_zero_and_overrides() -> None:
    s = settings_from_env(
        {
            "MIGSERVE_GATEWAY_PORT": "0",
            "MIGSERVE_GATEWAY_ID": "gw-1",
            "MIGSERVE_LOG_LEVEL": "debug",
            "MIGSERVE_DEMAND_INTERVAL_S": "0.5",
        }
    )
    assert (s.port, s.gateway_id, s.log_level, s.demand_interval_s) == (0, "gw-1", "DEBUG", 0.5)
    assert s.nats.name == "migserve-gateway-gw-1"
