"""The bridge against a real nats-server and real HTTP engines (the sim engine or a fake)."""

from __future__ import annotations

import asyncio

import httpx
from migserve_agent.bridge.app import Bridge
from migserve_agent.sim_engine import SimEngineConfig, create_app
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    JobAccepted,
    JobEnd,
    JobError,
    JobReply,
    SamplingParams,
    TokenChunk,
    encode,
)
from nats.aio.client import Client as NATS
from test_bridge_support import (
    MODEL,
    FakeEngine,
    bridge_settings,
    client,
    collect,
    running_bridge,
    serve_app,
    wait_until,
)


def texts(replies: list[JobReply]) -> list[str]:
    return [r.text for r in replies if isinstance(r, TokenChunk)]


def labels(bridge: Bridge) -> dict[str, str]:
    s = bridge.settings
    return {
        "model": s.model,
        "instance": s.instance_id,
        "node": s.node,
        "engine": s.engine_kind,
        "profile": s.profile,
    }


def sample(bridge: Bridge, name: str) -> float:
    return bridge.metrics.registry.get_sample_value(name, labels(bridge)) or 0.0


async def test_tokens_stream_back_in_order_through_the_sim_engine(
    nats_server: NatsServer, nc: NATS
) -> None:
    sim = create_app(
        SimEngineConfig(model_id=MODEL, alpha_ms=1.0, beta_ms=0.0, prefill_ms_per_token=0.0)
    )
    async with (
        serve_app(sim) as url,
        running_bridge(bridge_settings(nats_server.url, url, slots=2)) as bridge,
        client(nc) as c,
    ):
        _, queue = await c.submit(max_tokens=12)
        replies = await collect(queue)
        assert replies[0] == JobAccepted(instance_id="inst-a", node="node-1")
        tokens = [r for r in replies if isinstance(r, TokenChunk)]
        # one reply per read from the engine: tokens read together share a reply, whose
        # index is that of its first token
        indexes = [t.index for t in tokens]
        assert indexes[0] == 0 and indexes == sorted(set(indexes)) and indexes[-1] < 12
        assert all(t.text for t in tokens)
        end = replies[-1]
        assert isinstance(end, JobEnd)
        assert end.finish_reason == "length"
        assert end.completion_tokens == 12
        assert end.prompt_tokens > 0
        assert end.instance_id == "inst-a"
        assert len(replies) == len(tokens) + 2

        assert sample(bridge, "migserve_bridge_tokens_total") == 12
        assert sample(bridge, "migserve_bridge_ttft_seconds_count") == 1
        assert sample(bridge, "migserve_bridge_inter_token_seconds_count") == 11
        assert bridge.metrics.jobs("done") == 1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.metrics_port}") as http:
            metrics = (await http.get("/metrics")).text
            health = (await http.get("/health")).json()
        assert "migserve_bridge_inter_token_seconds_bucket" in metrics
        assert health["status"] == "ok"
        assert health["engine_ready"] is True
        assert health["in_flight"] == 0


async def test_completion_job_is_mapped_to_the_engine_request(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine()
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)),
        client(nc) as c,
    ):
        params = SamplingParams(max_tokens=3, temperature=0.5, seed=9, stop=["."])
        _, queue = await c.submit(api="completion", messages=[], prompt="Once", params=params)
        replies = await collect(queue)
    assert "".join(texts(replies)) == "t0 t1 t2 "
    assert replies[-1] == JobEnd(
        finish_reason="length",
        prompt_tokens=11,
        completion_tokens=3,
        instance_id="inst-a",
        tokens_sent=3,
    )
    assert engine.bodies == [
        {
            "model": MODEL,
            "prompt": "Once",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 3,
            "temperature": 0.5,
            "seed": 9,
            "stop": ["."],
        }
    ]


async def test_two_bridges_never_hold_more_jobs_than_their_slots(
    nats_server: NatsServer, nc: NATS
) -> None:
    one, three = FakeEngine(token_delay_s=0.03), FakeEngine(token_delay_s=0.03)
    async with (
        serve_app(one.app()) as url_one,
        serve_app(three.app()) as url_three,
        running_bridge(bridge_settings(nats_server.url, url_one, instance_id="one", slots=1)),
        running_bridge(bridge_settings(nats_server.url, url_three, instance_id="three", slots=3)),
        client(nc) as c,
    ):
        submitted = [await c.submit(max_tokens=5) for _ in range(8)]
        results = await asyncio.gather(*(collect(q) for _, q in submitted))
    ends = [r[-1] for r in results]
    assert all(isinstance(e, JobEnd) and e.completion_tokens == 5 for e in ends)
    assert one.max_in_flight == 1
    assert three.max_in_flight == 3
    assert one.requests + three.requests == 8
    served_by = {e.instance_id for e in ends if isinstance(e, JobEnd)}
    assert served_by == {"one", "three"}


async def test_engine_down_before_first_token_sends_the_job_to_another_bridge(
    nats_server: NatsServer, nc: NATS
) -> None:
    down, up = FakeEngine(), FakeEngine()
    async with (
        serve_app(down.app()) as url_down,
        serve_app(up.app()) as url_up,
        running_bridge(
            bridge_settings(nats_server.url, url_down, instance_id="down")
        ) as bridge_down,
        client(nc) as c,
    ):
        down.mode = "unavailable"
        down.healthy = False  # the health check agrees once the bridge looks
        _, queue = await c.submit(max_tokens=3)
        first = await asyncio.wait_for(queue.get(), 5)
        assert first == JobAccepted(instance_id="down", node="node-1")
        await wait_until(lambda: bridge_down.metrics.jobs("retried") == 1)
        assert bridge_down.health()["engine_ready"] is False
        async with running_bridge(bridge_settings(nats_server.url, url_up, instance_id="up")):
            replies = await collect(queue)
    assert replies[0] == JobAccepted(instance_id="up", node="node-1")
    assert "".join(texts(replies)) == "t0 t1 t2 "
    end = replies[-1]
    assert isinstance(end, JobEnd)
    assert end.instance_id == "up"
    assert down.requests == 1


async def test_a_job_no_engine_can_start_fails_after_max_attempts(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine(mode="unavailable")  # healthy, yet every request gets 503
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url, max_attempts=3)) as bridge,
        client(nc) as c,
    ):
        _, queue = await c.submit()
        replies = await collect(queue)
        assert bridge.metrics.jobs("retried") == 2
        assert bridge.metrics.jobs("error") == 1
    error = replies[-1]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.ENGINE_UNAVAILABLE
    assert not error.retryable
    assert "3 attempts" in error.message
    assert engine.requests == 3
    assert sum(isinstance(r, JobAccepted) for r in replies) == 3


async def test_a_request_the_engine_rejects_fails_at_once(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine(mode="reject")
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)),
        client(nc) as c,
    ):
        _, queue = await c.submit()
        replies = await collect(queue)
    error = replies[-1]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.BAD_REQUEST
    assert "context too long" in error.message
    assert engine.requests == 1


async def test_engine_failure_after_the_first_token_ends_the_stream_with_an_error(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine(mode="truncate_after_2")
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)) as bridge,
        client(nc) as c,
    ):
        _, queue = await c.submit(max_tokens=5)
        replies = await collect(queue)
        assert bridge.metrics.jobs("error") == 1
    assert "".join(texts(replies)) == "t0 t1 "
    error = replies[-1]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.ENGINE_FAILED
    assert "after 2 tokens" in error.message
    assert engine.requests == 1  # not redelivered: it was acked at the first token


async def test_a_job_taken_after_its_deadline_gets_timeout(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine()
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)) as bridge,
        client(nc) as c,
    ):
        _, queue = await c.submit(deadline_s=-1)
        replies = await collect(queue)
        assert bridge.metrics.jobs("expired") == 1
    assert len(replies) == 1
    error = replies[0]
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.TIMEOUT
    assert error.message == "expired before an instance took it"
    assert engine.requests == 0


async def test_bad_payloads_are_counted_and_the_next_job_works(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine()
    js = nc.jetstream()
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)) as bridge,
        client(nc) as c,
    ):
        bad_reply_to, bad_queue = c.router.open()
        await js.publish(subjects.infer(MODEL), b"\x00 not json")
        await js.publish(
            subjects.infer(MODEL), b'{"job_id": "x", "reply_to": "' + bad_reply_to.encode() + b'"}'
        )
        job = {"job_id": "y", "model": MODEL, "reply_to": "a b", "deadline": 1e12}
        await js.publish(subjects.infer(MODEL), encode(job))
        other_reply_to, other_queue = c.router.open()
        job = {**job, "model": "other", "reply_to": other_reply_to}
        await js.publish(subjects.infer(MODEL), encode(job))
        error = await asyncio.wait_for(bad_queue.get(), 5)
        other_error = await asyncio.wait_for(other_queue.get(), 5)
        _, queue = await c.submit()
        replies = await collect(queue)
        assert bridge.metrics.jobs("bad") == 4
        assert bridge.metrics.jobs("done") == 1
    assert isinstance(error, JobError)
    assert error.code == ErrorCode.BAD_MESSAGE
    assert "missing required field `model`" in error.message
    assert isinstance(other_error, JobError)
    assert other_error.code == ErrorCode.BAD_MESSAGE
    assert "'other'" in other_error.message
    assert isinstance(replies[-1], JobEnd)
    info = await js.stream_info(subjects.JOBS_STREAM)
    assert info.state.messages == 0  # bad ones are terminated, not redelivered


async def test_cancel_stops_the_engine_stream(nats_server: NatsServer, nc: NATS) -> None:
    engine = FakeEngine(token_delay_s=0.05)
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)) as bridge,
        client(nc) as c,
    ):
        job, queue = await c.submit(max_tokens=200)
        await asyncio.wait_for(engine.first_token.wait(), 5)
        await nc.publish(subjects.cancel(job.job_id), b"")
        replies = await collect(queue)
        await wait_until(lambda: engine.in_flight == 0)
        assert bridge.metrics.jobs("cancelled") == 1
    end = replies[-1]
    assert isinstance(end, JobEnd)
    assert end.finish_reason == "cancelled"
    assert 1 <= end.completion_tokens < 50
    assert engine.disconnected == 1


async def test_a_job_cancelled_before_it_was_taken_is_dropped(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine()
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url)),
        client(nc) as c,
    ):
        await nc.publish(subjects.cancel("job-late"), b"")
        await nc.flush()
        await asyncio.sleep(0.05)
        _, queue = await c.submit(job_id="job-late")
        replies = await collect(queue)
    assert replies == [JobEnd(finish_reason="cancelled", instance_id="inst-a")]
    assert engine.requests == 0


async def test_no_job_is_pulled_until_the_engine_is_healthy(
    nats_server: NatsServer, nc: NATS
) -> None:
    engine = FakeEngine(healthy=False)
    async with (
        serve_app(engine.app()) as url,
        running_bridge(bridge_settings(nats_server.url, url), engine_ready=False) as bridge,
        client(nc) as c,
    ):
        _, queue = await c.submit()
        await asyncio.sleep(0.4)
        assert queue.empty()
        assert bridge.health()["engine_ready"] is False
        engine.healthy = True
        replies = await collect(queue)
    assert isinstance(replies[-1], JobEnd)
