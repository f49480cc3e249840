"""SLO events from a real sim engine whose speed changes while it serves traffic.

A real nats-server, a real sim engine process at 20 ms per token, steady load
from two client loops, and the watcher with a 1 s window scraped every 0.1 s
(k = 3). The model's SLO is 60 ms: flat traffic gives no event; slowing the
engine five times gives slo.violation within two windows; undoing it gives
slo.recovered, in the same episode (trace id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import (
    InstanceRecord,
    ModelSpec,
    SloRecovered,
    SloUnderload,
    SloViolation,
    decode_event,
    encode,
)
from migserve_watcher.app import Watcher
from migserve_watcher.core.slo import SloPolicy
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

MODEL = "org/slow-down"
WINDOW_S = 1.0
SloEvent = SloViolation | SloRecovered | SloUnderload


@contextlib.asynccontextmanager
async def start_sim_engine() -> AsyncIterator[str]:
    """A sim engine process at 20 ms per token; yields its base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "migserve_agent.sim_engine",
        *("--port", "0", "--model", MODEL, "--profile", "1g.5gb", "--slots", "4"),
        *("--alpha-ms", "20", "--beta-ms", "0", "--prefill-ms-per-token", "0"),
        *("--log-level", "warning"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.fixture
async def sim_engine() -> AsyncIterator[str]:
    async with start_sim_engine() as url:
        yield url


def ready_record(url: str) -> InstanceRecord:
    return InstanceRecord(
        instance_id="inst-1",
        model_id=MODEL,
        node="node-1",
        gpu_index=0,
        profile="1g.5gb",
        start=6,
        engine="sim",
        state="ready",
        engine_url=url,
    )


async def load(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    while not stop.is_set():
        resp = await http.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert resp.status_code == 200, resp.text


async def next_slo_event(sub: Subscription, within: float) -> SloEvent | None:
    """The next SLO event of the model within ``within`` seconds, else None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except TimeoutError:
            return None
        evt = decode_event(msg.data)
        if isinstance(evt, SloViolation | SloRecovered | SloUnderload) and evt.model_id == MODEL:
            return evt
    return None


async def test_violation_and_recovery_follow_the_engine_speed(
    nc: NATS, nats_server, sim_engine: str
) -> None:
    buckets = await open_buckets(nc.jetstream())
    spec = ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=60)
    await buckets.models.put(subjects.model_key(MODEL), encode(spec))
    record = ready_record(sim_engine)
    await buckets.instances.put(subjects.instance_key("inst-1"), encode(record))
    events = await nc.subscribe(subjects.EVENTS_WILDCARD)
    settings = WatcherSettings(
        nats=NatsSettings(url=nats_server.url),
        interval_s=0.1,
        window_s=WINDOW_S,
        scrape_timeout_s=0.5,
        slo=SloPolicy(violation_windows=3, underload_windows=1000, cooldown_s=0.5),
    )
    metrics = WatcherMetrics()
    stop_watcher, stop_load = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient() as http, asyncio.TaskGroup() as tg:
        watcher = Watcher(settings=settings, nc=nc, http=http, metrics=metrics)
        tg.create_task(watcher.run(stop_watcher), name="test-watcher")
        loaders = [tg.create_task(load(http, sim_engine, stop_load)) for _ in range(2)]
        try:
            # flat: two windows of steady traffic at 20 ms per token, no event
            assert await next_slo_event(events, 2 * WINDOW_S + 0.5) is None

            changed = loop.time()
            resp = await http.post(f"{sim_engine}/sim/speed", json={"factor": 5.0})
            assert resp.status_code == 200, resp.text
            violation = await next_slo_event(events, 2 * WINDOW_S)
            assert isinstance(violation, SloViolation), violation
            assert loop.time() - changed <= 2 * WINDOW_S
            ev = violation.evidence
            assert ev.tpot_ms is not None and ev.tpot_ms > 60 and ev.slo_ms == 60
            assert ev.windows == 3 and ev.instances == ["inst-1"] and ev.window_s > 0
            assert ev.source == "direct" and "tgi_request_mean_time_per_token" in ev.query
            assert len(violation.trace_id) == 32

            resp = await http.post(f"{sim_engine}/sim/speed", json={"factor": 1.0})
            assert resp.status_code == 200, resp.text
            recovered = await next_slo_event(events, 3 * WINDOW_S)
            if isinstance(recovered, SloViolation):  # one more, still in the same episode
                assert recovered.trace_id == violation.trace_id
                recovered = await next_slo_event(events, 3 * WINDOW_S)
            assert isinstance(recovered, SloRecovered), recovered
            assert recovered.trace_id == violation.trace_id
            assert recovered.evidence.tpot_ms is not None and recovered.evidence.tpot_ms <= 54
        finally:
            stop_load.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*loaders, return_exceptions=True), 5)
            stop_watcher.set()
    await events.unsubscribe()
    assert metrics.registry.get_sample_value(
        "migserve_watcher_slo_events_total", {"kind": "violation"}
    )
