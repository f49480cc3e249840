"""The metrics watcher against a real nats-server and a real sim engine process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import (
    InstanceRecord,
    InstanceState,
    MetricsSnapshot,
    ModelSpec,
    decode_event,
    encode,
)
from migserve_watcher.adapters.exposition import ENGINE_SERIES, parse_sample
from migserve_watcher.app import Watcher
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

MODEL = "org/busy"
BROKEN = "org/broken"
ALPHA_MS = 20.0


@pytest.fixture
async def sim_engine() -> AsyncIterator[str]:
    """A sim engine process at 20 ms per token (no prefill, no concurrency penalty)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "migserve_agent.sim_engine",
        "--port",
        "0",
        "--model",
        MODEL,
        "--profile",
        "1g.5gb",
        "--slots",
        "4",
        "--alpha-ms",
        str(ALPHA_MS),
        "--beta-ms",
        "0",
        "--prefill-ms-per-token",
        "0",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        port = json.loads(line)["port"]
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def snapshot_of(
    sub: Subscription, model: str, *, until: Callable[[MetricsSnapshot], bool], within: float = 10
) -> MetricsSnapshot:
    """The first snapshot of ``model`` for which ``until(snapshot)`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no matching snapshot of {model} in {within} s")
        evt = decode_event((await sub.next_msg(timeout=left)).data)
        if isinstance(evt, MetricsSnapshot) and evt.model_id == model and until(evt):
            return evt


def record(
    instance_id: str, model: str, url: str, state: InstanceState = "ready"
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        model_id=model,
        node="node-1",
        gpu_index=0,
        profile="1g.5gb",
        start=6,
        engine="sim",
        state=state,
        engine_url=url,
    )


async def test_snapshot_tpot_from_a_real_sim_engine(nc: NATS, nats_server, sim_engine: str) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    for model in (MODEL, BROKEN):
        spec = ModelSpec(model_id=model, memory_mb=1000, tpot_slo_ms=50)
        await buckets.models.put(subjects.model_key(model), encode(spec))
    await buckets.instances.put(
        subjects.instance_key("inst-busy"), encode(record("inst-busy", MODEL, sim_engine))
    )
    # an engine that is gone: its scrape fails, and nothing else is disturbed
    await buckets.instances.put(
        subjects.instance_key("inst-gone"),
        encode(record("inst-gone", BROKEN, "http://127.0.0.1:9")),
    )
    await buckets.instances.put(
        subjects.instance_key("inst-starting"),
        encode(record("inst-starting", MODEL, "http://127.0.0.1:9", state="starting")),
    )
    snapshots = await js.subscribe(
        subjects.events_of_kind("metrics.snapshot"), ordered_consumer=True
    )

    settings = WatcherSettings(
        nats=NatsSettings(url=nats_server.url), interval_s=0.2, window_s=3.0, scrape_timeout_s=1.0
    )
    metrics = WatcherMetrics()
    stop = asyncio.Event()
    async with httpx.AsyncClient() as http:
        watcher = Watcher(settings=settings, nc=nc, http=http, metrics=metrics)
        task = asyncio.create_task(watcher.run(stop), name="test-watcher")
        try:
            # two scrapes and no traffic: unknown, never zero
            idle = await snapshot_of(snapshots, MODEL, until=lambda e: e.evidence.window_s > 0)
            assert idle.evidence.tpot_ms is None and idle.evidence.tokens == 0
            assert idle.evidence.instances == ["inst-busy"]  # the starting one is not scraped
            assert idle.evidence.slo_ms == 50 and idle.evidence.source == "direct"
            gone = await snapshot_of(snapshots, BROKEN, until=lambda e: True)
            assert gone.evidence.tpot_ms is None and gone.evidence.instances == []

            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
            }
            answers = await asyncio.gather(
                *(
                    http.post(f"{sim_engine}/v1/chat/completions", json=body, timeout=10)
                    for _ in range(4)
                )
            )
            total = sum(r.json()["usage"]["completion_tokens"] for r in answers)
            assert total > 0

            busy = await snapshot_of(snapshots, MODEL, until=lambda e: e.evidence.tokens == total)
            text = (await http.get(f"{sim_engine}/metrics")).text
            engine = parse_sample(text, ENGINE_SERIES["sim"], at=0)
            assert engine.latency_sum_s is not None and engine.latency_count == 4
            expected = 1000 * engine.latency_sum_s / engine.latency_count
            assert busy.evidence.tpot_ms == pytest.approx(expected, abs=1e-3)
            assert ALPHA_MS <= busy.evidence.tpot_ms < 3 * ALPHA_MS
            assert busy.evidence.instances == ["inst-busy"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    errors = metrics.registry.get_sample_value(
        "migserve_watcher_scrapes_total", {"target": "engine", "result": "error"}
    )
    assert errors is not None and errors > 0
    await snapshots.unsubscribe()


async def test_main_runs_and_stops_cleanly_on_sigterm(nats_server) -> None:
    env = {
        **os.environ,
        "MIGSERVE_NATS_URL": nats_server.url,
        "MIGSERVE_WATCHER_INTERVAL_S": "0.1",
        "MIGSERVE_LOG_FORMAT": "text",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "migserve_watcher", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"watcher starting" in line, line
        await asyncio.sleep(0.3)  # a few polls
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert b"watcher stopped" in stderr and b"Traceback" not in stderr


async def test_main_rejects_bad_settings_naming_the_variable() -> None:
    env = {**os.environ, "MIGSERVE_METRICS_SOURCE": "carrier-pigeon"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "migserve_watcher", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and b"MIGSERVE_METRICS_SOURCE" in stderr
