"""Draining: the bridge process on SIGTERM, and the cut-off after the drain timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
from migserve_agent.bridge.app import Bridge
from migserve_agent.sim_engine import SimEngineConfig, create_app
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import JobEnd, JobError, JobReply, TokenChunk, decode_job
from nats.aio.client import Client as NATS
from test_bridge_support import (
    MODEL,
    FakeEngine,
    bridge_settings,
    client,
    collect,
    serve_app,
    wait_until,
)


async def _first_token(queue: asyncio.Queue[JobReply]) -> None:
    while not isinstance(await asyncio.wait_for(queue.get(), 10), TokenChunk):
        pass


async def test_sigterm_finishes_the_job_in_hand_takes_no_new_one_and_exits_0(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    sim = create_app(
        SimEngineConfig(model_id=MODEL, alpha_ms=40.0, beta_ms=0.0, prefill_ms_per_token=0.0)
    )
    stderr_path = tmp_path / "bridge.log"
    async with serve_app(sim) as url, client(nc) as c:
        args = ["--model", MODEL, "--instance-id", "drain-1", "--node", "node-1",
                "--engine-url", url, "--engine-kind", "sim", "--slots", "2",
                "--metrics-port", "0", "--drain-timeout-s", "10",
                # a pull that ends at the moment the late job reaches it leaves the job
                # delivered to no one until the ack wait: keep that wait short here
                "--ack-wait-s", "2"]  # fmt: skip
        env = {**os.environ, "MIGSERVE_NATS_URL": nats_server.url, "MIGSERVE_LOG_FORMAT": "text"}
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "migserve_agent.bridge", *args,
                env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            announced = json.loads(line)
            assert announced["event"] == "listening"
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{announced['metrics_port']}"
            ) as http:
                for _ in range(500):
                    if (await http.get("/health")).json()["engine_ready"]:
                        break
                    await asyncio.sleep(0.01)
            job, queue = await c.submit(max_tokens=20)
            await _first_token(queue)

            proc.send_signal(signal.SIGTERM)
            late, late_queue = await c.submit(max_tokens=2)
            replies = await collect(queue)
            returncode = await asyncio.wait_for(proc.wait(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = stderr_path.read_text()
        assert returncode == 0, log
        end = replies[-1]
        assert isinstance(end, JobEnd), log
        assert end.completion_tokens == 20
        assert sum(isinstance(r, TokenChunk) for r in replies) == 19  # the first one was read
        assert late_queue.empty(), "the draining bridge took a new job"

        durable = subjects.jobs_consumer(MODEL)
        psub = await nc.jetstream().pull_subscribe_bind(durable, subjects.JOBS_STREAM)
        [msg] = await psub.fetch(1, timeout=10)
        assert decode_job(msg.data).job_id == late.job_id
        await msg.ack()
        await psub.unsubscribe()
        assert job.job_id != late.job_id


async def test_jobs_still_running_at_the_drain_timeout_are_cut_off(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine(token_delay_s=0.05)
    async with serve_app(engine.app()) as url, client(nc) as c:
        bridge = Bridge(bridge_settings(nats_server.url, url, drain_timeout_s=0.3))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        try:
            await wait_until(lambda: bridge.health()["engine_ready"])
            _, queue = await c.submit(max_tokens=200)
            await _first_token(queue)
            stop.set()
            await wait_until(lambda: bridge.health()["status"] == "draining")
            replies = await collect(queue)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    error = replies[-1]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.DRAINING
    assert error.retryable
    assert bridge.metrics.jobs("error") == 1
    assert engine.disconnected == 1
    assert engine.in_flight == 0


async def test_a_second_signal_cuts_off_at_once(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine(token_delay_s=0.05)
    async with serve_app(engine.app()) as url, client(nc) as c:
        bridge = Bridge(bridge_settings(nats_server.url, url, drain_timeout_s=30))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        try:
            await wait_until(lambda: bridge.health()["engine_ready"])
            _, queue = await c.submit(max_tokens=200)
            await _first_token(queue)
            stop.set()
            bridge.abort_now()
            replies = await collect(queue, within_s=3)
            await asyncio.wait_for(task, 3)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
    error = replies[-1]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.DRAINING


async def test_a_stop_while_waiting_for_nats_ends_the_bridge() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here now
    settings = bridge_settings(f"nats://127.0.0.1:{port}", "http://127.0.0.1:9")
    bridge = Bridge(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    await asyncio.sleep(0.3)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 3)
