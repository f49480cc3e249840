"""Fuzzing the gateway's HTTP API in process (hypothesis + starlette's TestClient).

Every route of the gateway's OpenAPI schema (and some that do not exist) gets
random methods, bodies (random bytes, random JSON, valid bodies mutated),
content types, headers and query strings. The gateway must never answer 500,
and every error must be JSON of the route's error shape (OpenAI's, or TGI's
on the TGI routes). NATS is replaced at the gateway's own seam (``Backend``):
a job client that answers every job at once, and a registry in a dict. The
TestClient re-raises any exception the app lets escape, so a crash fails the
test with its traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from migserve_gateway.adapters.backend import Backend
from migserve_gateway.adapters.registry import ModelExistsError
from migserve_gateway.api.errors import TGI_PATHS
from migserve_gateway.app import create_app
from migserve_gateway.core.auth import AuthKeys
from migserve_gateway.core.view import LiveView
from migserve_gateway.settings import GatewaySettings
from migserve_shared.messages import (
    Demand,
    InferenceJob,
    InstanceRecord,
    JobAccepted,
    JobEnd,
    JobReply,
    ModelSpec,
    TokenChunk,
)
from starlette.testclient import TestClient

MODEL = "org/model-1"
API_KEY = "k-inference-1"
ADMIN_KEY = "k-admin-1"
SETTINGS = GatewaySettings(
    gateway_id="gw-fuzz",
    cold_start_timeout_s=0.05,
    queue_timeout_s=0.05,
    token_idle_timeout_s=0.2,
    max_body_bytes=4096,
    default_max_tokens=8,
    max_tokens_limit=64,
    max_prompt_chars=2000,
    demand_interval_s=0.05,
    tgi_model=MODEL,
    auth_disabled=True,
)
FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class InstantJobs:
    """The gateway's ``JobClient``: answers every job with two tokens at once."""

    connected = True

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[JobReply]] = {}
        self.count = 0

    def open_replies(self) -> tuple[str, asyncio.Queue[JobReply]]:
        self.count += 1
        reply_to = f"_INBOX.fuzz.{self.count}"
        self.queues[reply_to] = asyncio.Queue()
        return reply_to, self.queues[reply_to]

    def close_replies(self, reply_to: str) -> None:
        self.queues.pop(reply_to, None)

    async def submit(self, job: InferenceJob) -> None:
        queue = self.queues[job.reply_to]
        for reply in (
            JobAccepted(instance_id="i1"),
            TokenChunk(text="Hello", index=0),
            TokenChunk(text=" world", index=1),
            JobEnd(prompt_tokens=2, completion_tokens=2),
        ):
            queue.put_nowait(reply)

    async def cancel(self, job_id: str) -> None:
        return None

    async def publish_demand(self, demand: Demand) -> None:
        return None


class DictRegistry:
    """The gateway's ``ModelRegistry`` in a dict, keeping the view current."""

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self.specs: dict[str, ModelSpec] = {}

    async def register(self, spec: ModelSpec, *, replace: bool, trace_id: str) -> bool:
        created = spec.model_id not in self.specs
        if not created and not replace:
            raise ModelExistsError(f"model {spec.model_id!r} is already registered")
        self.specs[spec.model_id] = spec
        self.view.put_model(spec)
        return created

    async def get(self, model_id: str) -> ModelSpec | None:
        return self.specs.get(model_id)

    async def list(self) -> list[ModelSpec]:
        return [self.specs[k] for k in sorted(self.specs)]

    async def remove(self, model_id: str, *, trace_id: str) -> bool:
        if self.specs.pop(model_id, None) is None:
            return False
        self.view.drop_model(model_id)
        return True


@contextmanager
def gateway(*, auth: AuthKeys | None = None) -> Iterator[TestClient]:
    view = LiveView()
    registry = DictRegistry(view)
    spec = ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=50)
    registry.specs[MODEL] = spec
    view.put_model(spec)
    view.put_instance(
        "i1",
        InstanceRecord(
            instance_id="i1", model_id=MODEL, node="n", gpu_index=0, profile="1g.5gb",
            start=0, state="ready",
        ),
    )  # fmt: skip
    settings_ = SETTINGS if auth is None else replace(SETTINGS, auth_disabled=False)
    app = create_app(
        settings_, Backend(jobs=InstantJobs(), registry=registry, view=view), auth=auth
    )
    with TestClient(app, base_url="http://gw", raise_server_exceptions=True) as client:
        yield client


def _routes() -> list[tuple[str, str]]:
    with gateway() as client:
        schema = client.get("/openapi.json").json()
    return sorted((m.upper(), p) for p, ops in schema["paths"].items() for m in ops)


ROUTES = _routes()

# Strategies --------------------------------------------------------------------------
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=15,
)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": MODEL, "prompt": "Once", "max_tokens": 4},
    "/generate": {"inputs": "Once", "parameters": {"max_new_tokens": 4}},
    "/generate_stream": {"inputs": "Once", "parameters": {"max_new_tokens": 4}},
    "/": {"inputs": "Once", "parameters": {"max_new_tokens": 4}, "stream": False},
    "/v1/admin/models": {"model_id": "org/new-model", "memory_mb": 1000, "tpot_slo_ms": 40},
}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
]


@st.composite
def mutated_body(draw: st.DrawFn, path: str) -> Any:
    """A valid body for ``path`` with one key replaced, dropped, added or nested oddly."""
    body = json.loads(json.dumps(VALID_BODIES.get(path, CHAT)))
    keys = sorted(body)
    how = draw(st.sampled_from(["replace", "drop", "add", "stream", "message", "as-list"]))
    if how == "replace":
        body[draw(st.sampled_from(keys))] = draw(json_values)
    elif how == "drop":
        del body[draw(st.sampled_from(keys))]
    elif how == "add":
        body[draw(st.text(max_size=12))] = draw(json_values)
    elif how == "stream":
        body["stream"] = draw(st.booleans() | json_values)
    elif how == "message":
        body["messages"] = [draw(json_values), {"role": "user", "content": draw(json_values)}]
    else:
        return [body]
    return body


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:  # now and then: a route or method that does not exist
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
        path = "/" + "/".join(
            draw(st.lists(printable.map(lambda s: quote(s, safe="")), max_size=3))
        )
    else:
        method, path = draw(st.sampled_from(ROUTES))
    model_id = draw(st.sampled_from([MODEL, "org/new-model"]) | st.text(max_size=30))
    path = path.replace("{model_id}", quote(model_id, safe="/") or "x")
    kind = draw(st.sampled_from(["none", "bytes", "json", "mutated", "valid"]))
    content: bytes | None
    if kind == "none":
        content = None
    elif kind == "bytes":
        content = draw(st.binary(max_size=300))
    elif kind == "json":
        content = json.dumps(draw(json_values)).encode()
    elif kind == "mutated":
        content = json.dumps(draw(mutated_body(path))).encode()
    else:
        content = json.dumps(VALID_BODIES.get(path, CHAT)).encode()
    pick = draw(st.integers(0, 3))  # JSON half the time, so bodies reach the handlers
    content_type = (
        CONTENT_TYPES[0] if pick < 2 else draw(st.sampled_from(CONTENT_TYPES) | printable)
    )
    headers = {"content-type": content_type}
    for name in ("authorization", "x-request-id", "traceparent", "accept"):
        if draw(st.booleans()):
            headers[name] = draw(printable)
    params = draw(
        st.dictionaries(st.sampled_from(["replace", "stream", "model", "x"]), printable, max_size=2)
    )
    return {"method": method, "url": path, "content": content, "headers": headers, "params": params}


# Checks ------------------------------------------------------------------------------
def check_answer(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """No 500; an error is JSON in the shape of its route (TGI's or OpenAI's)."""
    where = f"{method} {path} -> {status}: {body[:300]!r}"
    assert status != 500, where
    assert 100 <= status < 600, where
    if status < 400:
        return
    assert content_type.startswith("application/json"), where
    error = json.loads(body)
    if path in TGI_PATHS:
        assert set(error) == {"error", "error_type"}, where
        assert isinstance(error["error"], str) and isinstance(error["error_type"], str), where
    else:
        assert set(error) == {"error"}, where
        detail = error["error"]
        assert set(detail) == {"message", "type", "param", "code"}, where
        assert isinstance(detail["message"], str) and detail["message"], where
        assert isinstance(detail["type"], str), where
        assert detail["param"] is None or isinstance(detail["param"], str), where
        assert detail["code"] is None or isinstance(detail["code"], str), where


def send(client: TestClient, request: dict[str, Any]) -> None:
    r = client.request(**request)
    path = r.request.url.path  # as the server saw it ("//" arrives as "/")
    check_answer(
        request["method"], path, r.status_code, r.headers.get("content-type", ""), r.content
    )


# Tests -------------------------------------------------------------------------------
def test_the_schema_lists_the_routes_we_fuzz() -> None:
    assert ("POST", "/v1/chat/completions") in ROUTES
    assert ("DELETE", "/v1/admin/models/{model_id}") in ROUTES
    assert {p for _, p in ROUTES} >= set(VALID_BODIES)


@pytest.mark.timeout(120)
def test_random_requests_never_crash_the_gateway() -> None:
    with gateway() as client:

        @FUZZ
        @given(request=requests())
        def fuzz(request: dict[str, Any]) -> None:
            send(client, request)

        fuzz()


@pytest.mark.timeout(120)
def test_random_requests_with_auth_on() -> None:
    keys = AuthKeys.from_keys([API_KEY], ADMIN_KEY)
    with gateway(auth=keys) as client:

        @settings(FUZZ, max_examples=300)
        @given(
            request=requests(),
            key=st.sampled_from([None, API_KEY, ADMIN_KEY]) | printable,
            scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]),
        )
        def fuzz(request: dict[str, Any], key: str | None, scheme: str) -> None:
            if key is not None:
                request["headers"]["authorization"] = f"{scheme}{key}"
            send(client, request)

        fuzz()


@pytest.mark.timeout(120)
def test_mutated_valid_bodies_on_every_body_route() -> None:
    with gateway() as client:

        @FUZZ
        @given(data=st.data(), path=st.sampled_from(sorted(VALID_BODIES)))
        def fuzz(data: st.DataObject, path: str) -> None:
            body = data.draw(mutated_body(path))
            request = {
                "method": "POST",
                "url": path,
                "content": json.dumps(body).encode(),
                "headers": {"content-type": "application/json"},
                "params": {"replace": "true"} if path.startswith("/v1/admin") else {},
            }
            send(client, request)

        fuzz()


def test_the_checks_can_fail() -> None:
    """A 500, or an error that is not JSON of the right shape, is caught."""
    openai = b'{"error": {"message": "x", "type": "t", "param": null, "code": "c"}}'
    tgi = b'{"error": "x", "error_type": "validation"}'
    chat = ("POST", "/v1/chat/completions")
    with pytest.raises(AssertionError):
        check_answer(*chat, 500, "application/json", openai)
    with pytest.raises(AssertionError):
        check_answer(*chat, 400, "text/plain", b"bad")
    with pytest.raises(AssertionError):
        check_answer("POST", "/generate", 400, "application/json", openai)
    with pytest.raises(AssertionError):
        check_answer(*chat, 400, "application/json", tgi)
    check_answer(*chat, 400, "application/json", openai)
    check_answer("POST", "/generate", 422, "application/json", tgi)
