"""An instance dying under a request, seen from the gateway's HTTP API.

Everything is real: nats-server, the gateway (in process), sim engines and
bridges (processes where the test kills them with SIGKILL, in process where
it stops them the way SIGTERM does). Two instances serve one model:

- it dies before its first token: the job goes to the other instance (the
  bridge hands it back, or JetStream redelivers it after the ack wait when
  the bridge itself died) and the client gets the whole answer;
- it dies after its first token: a stream ends with an error object and
  ``[DONE]``, a whole answer with a 502/503 JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from migserve_agent.bridge.app import Bridge
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.messages import InstanceRecord, encode
from nats.aio.client import Client as NATS
from test_bridge_support import bridge_settings, running_bridge, wait_until
from test_gateway_nats import CHAT, MODEL, chat, instance_ready, register, running_gateway

#: the engine of the instance that dies: a first token after about 1.5 s (a long prefill)
SLOW_START = ("--alpha-ms", "5", "--prefill-ms-per-token", "300")
#: ... or one token every 0.4 s, the first one quickly
SLOW_TOKENS = ("--alpha-ms", "400", "--prefill-ms-per-token", "0")
FAST = ("--alpha-ms", "2", "--prefill-ms-per-token", "0")
MAX_TOKENS = 8


@dataclass
class Proc:
    """A child process and the JSON line it announced itself with."""

    process: asyncio.subprocess.Process
    hello: dict[str, Any]

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 5)


@contextlib.asynccontextmanager
async def child(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "MIGSERVE_LOG_LEVEL": "WARNING", **(env or {})},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        yield Proc(process, json.loads(line))
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 10)


@contextlib.asynccontextmanager
async def sim_engine(*flags: str) -> AsyncIterator[tuple[str, Proc]]:
    argv = ("migserve_agent.sim_engine", "--port", "0", "--model", MODEL, "--slots", "2")
    async with child(*argv, "--beta-ms", "0", "--log-level", "warning", *flags) as proc:
        yield f"http://127.0.0.1:{proc.hello['port']}", proc


@contextlib.asynccontextmanager
async def bridge_process(nats_url: str, engine_url: str, iid: str) -> AsyncIterator[Proc]:
    argv = (
        "migserve_agent.bridge", "--model", MODEL, "--instance-id", iid, "--node", "node-1",
        "--engine-url", engine_url, "--engine-kind", "sim", "--slots", "1",
        "--metrics-port", "0", "--ack-wait-s", "1", "--drain-timeout-s", "0",
    )  # fmt: skip
    async with child(*argv, env={"MIGSERVE_NATS_URL": nats_url}) as proc:
        health = f"http://127.0.0.1:{proc.hello['metrics_port']}/health"
        async with httpx.AsyncClient() as http:
            while not (await http.get(health)).json()["engine_ready"]:
                await asyncio.sleep(0.02)
        yield proc


async def bridge_in_flight(proc: Proc) -> int:
    async with httpx.AsyncClient() as http:
        health = await http.get(f"http://127.0.0.1:{proc.hello['metrics_port']}/health")
    return int(health.json()["in_flight"])


def settings(nats_url: str, engine_url: str, iid: str) -> Any:
    return bridge_settings(
        nats_url, engine_url, model=MODEL, instance_id=iid, ack_wait_s=1.0, drain_timeout_s=0.0
    )


async def setup(nc: NATS) -> None:
    await register(nc)
    for iid in ("a", "b"):
        await instance_ready(nc, iid=iid)


async def mark_failed(nc: NATS, iid: str) -> None:
    """What the agent writes when it finds an instance's processes dead."""
    record = InstanceRecord(
        instance_id=iid, model_id=MODEL, node="node-1", gpu_index=0, profile="1g.5gb", start=0,
        state="failed", reason="bridge exited",
    )  # fmt: skip
    buckets = await open_buckets(nc.jetstream())
    await buckets.instances.put(subjects.instance_key(iid), encode(record))


@contextlib.asynccontextmanager
async def gateway_client(nats_server: NatsServer, nc: NATS) -> AsyncIterator[httpx.AsyncClient]:
    """Two ready instances registered, a gateway running, and an HTTP client to it."""
    await setup(nc)
    async with (
        running_gateway(nats_server) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        yield http


def assert_whole_answer(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    assert body["choices"][0]["message"]["content"]


Death = Literal["engine killed", "bridge stopped", "bridge killed"]


@pytest.mark.parametrize("death", ["engine killed", "bridge stopped"])
async def test_death_before_the_first_token_is_retried_on_the_other_instance(
    nats_server: NatsServer, nc: NATS, death: Death
) -> None:
    async with (
        gateway_client(nats_server, nc) as http,
        sim_engine(*SLOW_START) as (url_a, engine_a),
        sim_engine(*FAST) as (url_b, _),
        contextlib.AsyncExitStack() as stack,
    ):
        bridge_a: Bridge = await stack.enter_async_context(
            running_bridge(settings(nats_server.url, url_a, "a"))
        )
        request = asyncio.create_task(http.post(CHAT, json=chat(max_tokens=MAX_TOKENS)))
        await wait_until(lambda: len(bridge_a.running) == 1)  # a took it; no token for 1.5 s
        async with running_bridge(settings(nats_server.url, url_b, "b")) as bridge_b:
            await asyncio.sleep(0.2)
            if death == "engine killed":
                await engine_a.kill()
            else:
                await stack.aclose()  # SIGTERM's drain, with no time to finish
            response = await request
            assert bridge_b.metrics.jobs("done") == 1
        assert_whole_answer(response)
        assert bridge_a.metrics.jobs("retried") == 1


async def test_a_killed_bridge_s_job_is_redelivered_after_the_ack_wait(
    nats_server: NatsServer, nc: NATS
) -> None:
    async with (
        gateway_client(nats_server, nc) as http,
        sim_engine(*SLOW_START) as (url_a, _),
        sim_engine(*FAST) as (url_b, _),
        bridge_process(nats_server.url, url_a, "a") as bridge_a,
    ):
        request = asyncio.create_task(http.post(CHAT, json=chat(max_tokens=MAX_TOKENS)))
        async with asyncio.timeout(10):
            while not await bridge_in_flight(bridge_a):
                await asyncio.sleep(0.02)
        await bridge_a.kill()  # holds the job, unacked: nobody hands it back
        async with running_bridge(settings(nats_server.url, url_b, "b")) as bridge_b:
            response = await request
            assert bridge_b.metrics.jobs("done") == 1
        assert_whole_answer(response)


async def first_token_seen(http: httpx.AsyncClient) -> bool:
    return "migserve_gateway_ttft_seconds_count 1.0" in (await http.get("/metrics")).text


async def kill_after_first_token(
    death: Death,
    nc: NATS,
    engine: Proc,
    bridge: Proc | contextlib.AsyncExitStack,
) -> None:
    if death == "engine killed":
        await engine.kill()
    elif death == "bridge stopped":
        assert isinstance(bridge, contextlib.AsyncExitStack)
        await bridge.aclose()
    else:
        assert isinstance(bridge, Proc)
        await bridge.kill()
        await mark_failed(nc, "a")  # the agent notices the dead process


@contextlib.asynccontextmanager
async def instance_a(
    death: Death, nats_url: str, engine_url: str
) -> AsyncIterator[Proc | contextlib.AsyncExitStack]:
    """Instance a's bridge: a process to SIGKILL, or in process to stop like SIGTERM."""
    if death == "bridge killed":
        async with bridge_process(nats_url, engine_url, "a") as proc:
            yield proc
        return
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_bridge(settings(nats_url, engine_url, "a")))
        yield stack


# (how instance a dies, the error code of the stream, the status of a whole answer)
AFTER_FIRST: list[tuple[Death, str, int]] = [
    ("engine killed", "engine_failed", 502),
    ("bridge stopped", "draining", 503),
    ("bridge killed", "engine_failed", 502),
]


@pytest.mark.parametrize(("death", "code"), [(death, code) for death, code, _ in AFTER_FIRST])
async def test_death_after_the_first_token_ends_the_stream_with_an_error(
    nats_server: NatsServer, nc: NATS, death: Death, code: str
) -> None:
    async with (
        gateway_client(nats_server, nc) as http,
        sim_engine(*SLOW_TOKENS) as (url_a, engine_a),
        instance_a(death, nats_server.url, url_a) as bridge_a,
    ):
        lines: list[str] = []
        req = chat(max_tokens=MAX_TOKENS, stream=True)
        async with http.stream("POST", CHAT, json=req) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 1:  # the first token: now instance a dies
                    await kill_after_first_token(death, nc, engine_a, bridge_a)
        events = [line.removeprefix("data: ") for line in lines]
        first = json.loads(events[0])
        assert first["choices"][0]["delta"]["content"]
        error = json.loads(events[-2])["error"]
        assert error["code"] == code, error
        assert events[-1] == "[DONE]"
        assert len(events) < MAX_TOKENS + 2  # it did not run to its end


@pytest.mark.parametrize(("death", "code", "status"), AFTER_FIRST)
async def test_death_after_the_first_token_fails_a_whole_answer(
    nats_server: NatsServer, nc: NATS, death: Death, code: str, status: int
) -> None:
    async with (
        gateway_client(nats_server, nc) as http,
        sim_engine(*SLOW_TOKENS) as (url_a, engine_a),
        instance_a(death, nats_server.url, url_a) as bridge_a,
    ):
        request = asyncio.create_task(http.post(CHAT, json=chat(max_tokens=MAX_TOKENS)))
        async with asyncio.timeout(10):
            while not await first_token_seen(http):
                await asyncio.sleep(0.02)
        await kill_after_first_token(death, nc, engine_a, bridge_a)
        response = await request
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == code
