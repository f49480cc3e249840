"""The gateway over real HTTP (uvicorn in process, port 0) against a real nats-server.

A fake bridge written here pulls jobs from the model's shared consumer and
answers through ``bus.ReplySender``; fake instances are records written to
the instances bucket, as an agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import openai
import pytest
from migserve_cli.nats_server import NatsServer, start_nats_server
from migserve_gateway.server import run_gateway
from migserve_gateway.settings import settings_from_env
from migserve_shared import subjects
from migserve_shared.bus import ReplySender, ensure_jobs_consumer, open_buckets
from migserve_shared.messages import (
    Demand,
    InferenceJob,
    InstanceRecord,
    JobAccepted,
    JobEnd,
    ModelRegistered,
    ModelRemoved,
    ModelSpec,
    TokenChunk,
    decode_event,
    decode_job,
    decode_model_spec,
    encode,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@contextlib.asynccontextmanager
async def running_gateway(server: NatsServer, **overrides: Any) -> AsyncIterator[str]:
    """Run the gateway (what ``python -m migserve_gateway`` runs) and yield its URL."""
    env = {
        "MIGSERVE_NATS_URL": server.url,
        "MIGSERVE_GATEWAY_PORT": "0",
        "MIGSERVE_GATEWAY_ID": "gw-test",
        "MIGSERVE_COLD_START_TIMEOUT_S": "10",
        "MIGSERVE_DEMAND_INTERVAL_S": "0.2",
        "MIGSERVE_AUTH_DISABLED": "true",
    }
    settings = replace(settings_from_env(env), **overrides)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_gateway(settings, stop, on_listening=port.set_result))
    try:
        await asyncio.wait((task, port), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port.result()}"
    finally:
        stop.set()
        await task


@dataclass
class FakeBridge:
    """Takes the model's jobs from its shared pull consumer and answers with canned words."""

    nc: NATS
    words: tuple[str, ...] = ("Hello", ",", " world")
    jobs: list[InferenceJob] = field(default_factory=list)

    async def run(self, model: str = MODEL) -> None:
        js = self.nc.jetstream()
        durable = await ensure_jobs_consumer(js, model, ack_wait=5)
        psub = await js.pull_subscribe_bind(durable, subjects.JOBS_STREAM)
        try:
            while True:
                try:
                    msgs = await psub.fetch(1, timeout=0.2)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await self._serve(msg)
        finally:
            await psub.unsubscribe()

    async def _serve(self, msg: Msg) -> None:
        job = decode_job(msg.data)
        await msg.ack()
        self.jobs.append(job)
        sender = ReplySender(self.nc, job.reply_to)
        await sender.send(JobAccepted(instance_id="fake-1", node="node-1"))
        for i, word in enumerate(self.words):
            await sender.send(TokenChunk(text=word, index=i))
        await sender.send(JobEnd(prompt_tokens=7, completion_tokens=len(self.words)))


@contextlib.asynccontextmanager
async def bridge_running(nc: NATS, **kwargs: Any) -> AsyncIterator[FakeBridge]:
    bridge = FakeBridge(nc, **kwargs)
    task = asyncio.create_task(bridge.run(), name="fake-bridge")
    try:
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def register(nc: NATS, model: str = MODEL) -> None:
    buckets = await open_buckets(nc.jetstream())
    spec = ModelSpec(model_id=model, memory_mb=500, tpot_slo_ms=50)
    await buckets.models.put(subjects.model_key(model), encode(spec))


async def instance_ready(nc: NATS, model: str = MODEL, iid: str = "fake-1") -> None:
    record = InstanceRecord(
        instance_id=iid, model_id=model, node="node-1", gpu_index=0, profile="1g.5gb", start=0,
        state="ready",
    )  # fmt: skip
    buckets = await open_buckets(nc.jetstream())
    await buckets.instances.put(subjects.instance_key(iid), encode(record))


async def until(predicate: Any) -> None:
    async with asyncio.timeout(5.0):
        while not await predicate():
            await asyncio.sleep(0.02)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def sse_text(body: str) -> tuple[str, list[Any]]:
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return text, events


async def test_admin_api_stores_in_kv_and_publishes_events(
    nats_server: NatsServer, nc: NATS
) -> None:
    events = await nc.subscribe(subjects.EVENTS_WILDCARD)
    buckets = await open_buckets(nc.jetstream())
    spec = {"model_id": MODEL, "memory_mb": 500, "tpot_slo_ms": 40, "min_profile": "1g.5gb"}
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/admin/models", json=spec, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 201, r.text
        stored = decode_model_spec(
            (await buckets.models.get(subjects.model_key(MODEL))).value or b""
        )
        assert (stored.model_id, stored.tpot_slo_ms, stored.min_profile) == (MODEL, 40, "1g.5gb")
        evt = decode_event((await events.next_msg(timeout=2)).data)
        assert isinstance(evt, ModelRegistered)
        assert (evt.model.model_id, evt.trace_id, evt.source) == (MODEL, TRACE, "gw-test")

        assert (await http.post("/v1/admin/models", json=spec)).status_code == 409
        assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == [MODEL]
        r = await http.get(f"/v1/admin/models/{MODEL}")
        assert (r.status_code, r.json()["memory_mb"]) == (200, 500)

        assert (await http.delete(f"/v1/admin/models/{MODEL}")).status_code == 204
        evt = decode_event((await events.next_msg(timeout=2)).data)
        assert isinstance(evt, ModelRemoved) and evt.model_id == MODEL
        assert (await http.get(f"/v1/admin/models/{MODEL}")).status_code == 404
        assert (await http.get("/v1/models")).json()["data"] == []
        r = await http.post(CHAT, json=chat())
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    await events.unsubscribe()


async def test_chat_through_a_bridge_streaming_and_not(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    await instance_ready(nc)
    async with (
        running_gateway(nats_server) as url,
        httpx.AsyncClient(base_url=url) as http,
        bridge_running(nc) as bridge,
    ):
        assert (await http.get("/health")).json() == {"status": "ok"}
        r = await http.post(CHAT, json=chat(max_tokens=9), headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "Hello, world"
        assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        job = bridge.jobs[0]
        assert (job.model, job.trace_id, job.params.max_tokens) == (MODEL, TRACE, 9)
        assert job.deadline - job.created == pytest.approx(30.0)  # a ready instance: queue timeout

        req = chat(stream=True, stream_options={"include_usage": True})
        async with http.stream("POST", CHAT, json=req, headers={"x-request-id": "r-1"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-request-id"] == "r-1"
            text, events = sse_text((await resp.aread()).decode())
        assert text == "Hello, world"
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["total_tokens"] == 10
        assert bridge.jobs[1].request_id == "r-1"
        metrics = (await http.get("/metrics")).text
        assert "migserve_gateway_ttft_seconds_count 2.0" in metrics
        assert "migserve_gateway_in_flight 0.0" in metrics


async def test_no_ready_instance_publishes_demand_and_holds(
    nats_server: NatsServer, nc: NATS
) -> None:
    await register(nc)
    demands = await nc.subscribe(subjects.events_of_kind("demand"))
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:
        request = asyncio.create_task(
            http.post(CHAT, json=chat(), headers={"traceparent": TRACEPARENT}, timeout=10)
        )
        demand = decode_event((await demands.next_msg(timeout=3)).data)
        assert isinstance(demand, Demand)
        assert (demand.model_id, demand.trace_id, demand.waiting) == (MODEL, TRACE, 1)
        again = decode_event((await demands.next_msg(timeout=3)).data)  # still waiting
        assert isinstance(again, Demand) and again.event_id != demand.event_id
        assert not request.done()

        await instance_ready(nc)  # an agent reports the instance ready, its bridge pulls
        async with bridge_running(nc) as bridge:
            r = await request
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello, world"
        [job] = bridge.jobs
        assert job.deadline - job.created == pytest.approx(10.0)  # held for a cold start
    await demands.unsubscribe()


async def test_cold_start_timeout_is_503_json_and_cancels(
    nats_server: NatsServer, nc: NATS
) -> None:
    await register(nc)
    cancels = await nc.subscribe(subjects.CANCEL_WILDCARD)
    async with (
        running_gateway(nats_server, cold_start_timeout_s=0.5) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        r = await http.post(CHAT, json=chat(stream=True))
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        message = r.json()["error"]["message"]
        assert message.startswith(f"no instance of {MODEL} became ready within 0.5 s")
        cancel = await cancels.next_msg(timeout=2)
        assert cancel.subject.startswith("llm.cancel.job-")
    await cancels.unsubscribe()


async def test_client_disconnect_cancels_the_held_job(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    cancels = await nc.subscribe(subjects.CANCEL_WILDCARD)
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(CHAT, json=chat(stream=True), timeout=0.5)
        cancel = await cancels.next_msg(timeout=3)  # long before the 10 s cold start
        assert cancel.subject.startswith("llm.cancel.job-")
        metrics = (await http.get("/metrics")).text
        assert 'status="499"' in metrics
        assert "migserve_gateway_in_flight 0.0" in metrics
    await cancels.unsubscribe()


async def test_bad_kv_entries_are_counted_and_ignored(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    buckets = await open_buckets(nc.jetstream())
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:
        await buckets.instances.put("garbage", b"{not an instance")
        await buckets.models.put("garbage", b"[]")

        async def counted() -> bool:
            text = (await http.get("/metrics")).text
            return all(
                f'migserve_gateway_bad_messages_total{{source="{s}"}} 1.0' in text
                for s in ("instances", "models")
            )

        await until(counted)
        assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == [MODEL]
        assert (await http.get("/health")).status_code == 200


async def test_view_catches_up_after_a_nats_restart(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    port = int(nats_server.url.rsplit(":", 1)[1])
    async with running_gateway(nats_server) as url, httpx.AsyncClient(base_url=url) as http:

        async def listed(*models: str) -> bool:
            data = (await http.get("/v1/models")).json()["data"]
            return [m["id"] for m in data] == list(models)

        async def health_is(status: int) -> bool:
            return (await http.get("/health")).status_code == status

        await register(nc, "before/restart")
        await until(lambda: listed("before/restart"))  # the watch follows the bucket
        nats_server.stop()

        await until(lambda: health_is(503))
        restarted = start_nats_server(tmp_path / "nats", port=port)  # the fixture's store
        try:
            await until(lambda: health_is(200))
            await register(nc, "after/restart")  # written by someone else, seen through the watch
            await until(lambda: listed("after/restart", "before/restart"))
        finally:
            restarted.stop()


async def test_official_openai_client(nats_server: NatsServer, nc: NATS) -> None:
    await register(nc)
    await instance_ready(nc)
    async with running_gateway(nats_server) as url, bridge_running(nc):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)

        async def model_listed() -> bool:
            # the gateway's view follows the bucket; it may lag a registration
            # made just before start by a few milliseconds
            return MODEL in [m.id for m in (await client.models.list()).data]

        try:
            await until(model_listed)
            messages: Any = [{"role": "user", "content": "Say hello"}]
            done = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=5
            )
            assert done.choices[0].message.content == "Hello, world"
            assert done.usage is not None and done.usage.completion_tokens == 3

            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=0.2,
                stop=["\n"],
            )
            parts: list[str] = []
            usage = None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                usage = chunk.usage or usage
            assert "".join(parts) == "Hello, world"
            assert usage is not None and usage.total_tokens == 10

            models = await client.models.list()
            assert [m.id for m in models.data] == [MODEL]
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="no/such", messages=messages)
            with pytest.raises(openai.BadRequestError, match="n=2"):
                await client.chat.completions.create(model=MODEL, messages=messages, n=2)
        finally:
            await client.close()


def test_cli_announces_its_port_serves_and_stops_on_sigterm(nats_server: NatsServer) -> None:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "error",
        "MIGSERVE_NATS_URL": nats_server.url,
        "MIGSERVE_GATEWAY_PORT": "0",
        "MIGSERVE_LOG_LEVEL": "warning",
        "MIGSERVE_AUTH_DISABLED": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "migserve_gateway"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "listening"
        url = f"http://127.0.0.1:{line['port']}"
        assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
        r = httpx.post(f"{url}/v1/admin/models", json={"model_id": "m", "memory_mb": 1}, timeout=5)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "tpot_slo_ms")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_cli_refuses_bad_settings_by_name() -> None:
    env = {**os.environ, "MIGSERVE_GATEWAY_PORT": "eighty"}
    proc = subprocess.run(
        [sys.executable, "-m", "migserve_gateway"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "MIGSERVE_GATEWAY_PORT='eighty'" in proc.stderr
