"""Long-lived pulls: cut short when the bridge stops or its engine fails, and nothing lost."""

from __future__ import annotations

import asyncio
import time

from migserve_agent.bridge.app import Bridge
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.messages import JobAccepted, JobEnd, decode_job
from nats.aio.client import Client as NATS
from test_bridge_support import (
    FakeEngine,
    bridge_settings,
    client,
    collect,
    running_bridge,
    serve_app,
    wait_until,
)

LONG_PULLS = 30.0  # far longer than any of these tests


async def test_a_stop_ends_idle_pulls_at_once_and_later_jobs_stay_queued(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine()
    async with serve_app(engine.app()) as url, client(nc) as c:
        bridge = Bridge(bridge_settings(nats_server.url, url, slots=3, fetch_timeout_s=LONG_PULLS))
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        await wait_until(lambda: bridge.health()["engine_ready"])
        await asyncio.sleep(0.1)  # the slots' pulls are pending now
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 2.0  # not LONG_PULLS

        job, _ = await c.submit()  # after the stop: no pull of the old bridge may take it
        psub = await nc.jetstream().pull_subscribe_bind(
            subjects.jobs_consumer(job.model), subjects.JOBS_STREAM
        )
        [msg] = await psub.fetch(1, timeout=3)
        assert decode_job(msg.data).job_id == job.job_id
        await msg.ack()
        await psub.unsubscribe()
    assert engine.requests == 0


async def test_a_failed_engine_s_pulls_end_so_the_next_job_goes_elsewhere_at_once(
    nats_server: NatsServer, nc: NATS
) -> None:
    down, up = FakeEngine(), FakeEngine()
    settings = {"slots": 3, "fetch_timeout_s": LONG_PULLS, "health_max_interval_s": 5.0}
    async with (
        serve_app(down.app()) as url_down,
        serve_app(up.app()) as url_up,
        running_bridge(
            bridge_settings(nats_server.url, url_down, instance_id="down", **settings)
        ) as bridge_down,
        client(nc) as c,
    ):
        down.mode, down.healthy = "unavailable", False
        _, first = await c.submit()
        await wait_until(lambda: not bridge_down.health()["engine_ready"])
        async with running_bridge(
            bridge_settings(nats_server.url, url_up, instance_id="up", **settings)
        ):
            replies = await collect(first, within_s=5)
            assert replies[-1] == JobEnd(
                finish_reason="length",
                prompt_tokens=11,
                completion_tokens=3,
                instance_id="up",
                tokens_sent=3,
            )
            started = time.monotonic()
            _, second = await c.submit()
            replies = await collect(second, within_s=5)
            # down's other two slots had pulls pending: they were dropped, so no detour
            assert time.monotonic() - started < 1.0
        assert replies[0] == JobAccepted(instance_id="up", node="node-1")
        assert down.requests == 1
        assert bridge_down.metrics.jobs("retried") == 1  # the first job; the second never came
