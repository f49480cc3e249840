"""The shared bus helpers against a real nats-server."""

from __future__ import annotations

import asyncio

from migserve_shared import subjects
from migserve_shared.bus import (
    EventPublisher,
    ReplyRouter,
    ReplySender,
    ensure_jetstream,
    ensure_jobs_consumer,
    iterate_replies,
    open_buckets,
)
from migserve_shared.messages import (
    Demand,
    InferenceJob,
    JobEnd,
    ModelSpec,
    TokenChunk,
    decode_event,
    decode_job,
    encode,
    now,
)
from nats.aio.client import Client as NATS

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


async def test_ensure_jetstream_is_idempotent(nc: NATS) -> None:
    js = nc.jetstream()
    await ensure_jetstream(js)
    await ensure_jetstream(js)
    buckets = await open_buckets(js)
    spec = ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=50)
    rev = await buckets.models.put(subjects.model_key(MODEL), encode(spec))
    assert rev >= 1


async def test_event_lands_on_its_subject_once(nc: NATS) -> None:
    js = nc.jetstream()
    sub = await js.subscribe(subjects.EVENTS_WILDCARD, ordered_consumer=True)
    pub = EventPublisher(js, source="test")
    evt = Demand(model_id=MODEL, trace_id="abc")
    await pub.publish(evt)
    await pub.publish(evt)  # deduplicated by event id
    msg = await sub.next_msg(timeout=2)
    assert msg.subject == subjects.event("demand", MODEL)
    got = decode_event(msg.data)
    assert isinstance(got, Demand)
    assert got.source == "test"
    assert got.trace_id == "abc"
    await asyncio.sleep(0.1)
    assert sub.pending_msgs == 0
    await sub.unsubscribe()


async def test_job_round_trip_through_work_queue(nc: NATS) -> None:
    js = nc.jetstream()
    durable = await ensure_jobs_consumer(js, MODEL, ack_wait=5)
    router = ReplyRouter(nc)
    await router.start()
    reply_to, queue = router.open()
    job = InferenceJob(job_id="j1", model=MODEL, reply_to=reply_to, deadline=now() + 10)
    await js.publish(subjects.infer(MODEL), encode(job))

    psub = await js.pull_subscribe_bind(durable, subjects.JOBS_STREAM)
    [msg] = await psub.fetch(1, timeout=2)
    got = decode_job(msg.data)
    await msg.ack()
    sender = ReplySender(nc, got.reply_to)
    for i, word in enumerate(["Hello", " world"]):
        await sender.send(TokenChunk(text=word, index=i))
    await sender.send(JobEnd(completion_tokens=2))

    texts = []
    async for reply in iterate_replies(queue, first_timeout=2, idle_timeout=2):
        if isinstance(reply, TokenChunk):
            texts.append(reply.text)
    assert "".join(texts) == "Hello world"
    router.close(reply_to)
    await psub.unsubscribe()
    await router.stop()
