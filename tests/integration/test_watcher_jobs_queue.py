"""The watcher's JetStream view of a model's queue: jobs not yet delivered to a bridge."""

from __future__ import annotations

from migserve_shared import subjects
from migserve_shared.bus import ensure_jetstream, ensure_jobs_consumer
from migserve_watcher.adapters.jobs_queue import jobs_waiting
from nats.aio.client import Client as NATS

MODEL = "org/queued-model"


async def test_waiting_is_the_consumers_undelivered_jobs(nc: NATS) -> None:
    js = nc.jetstream()
    await ensure_jetstream(js)
    assert await jobs_waiting(js, MODEL) is None  # no bridge ever bound: unknown
    durable = await ensure_jobs_consumer(js, MODEL, ack_wait=30.0)
    assert await jobs_waiting(js, MODEL) == 0
    for i in range(3):
        await js.publish(subjects.infer(MODEL), f"job-{i}".encode())
    assert await jobs_waiting(js, MODEL) == 3
    sub = await js.pull_subscribe_bind(durable, stream=subjects.JOBS_STREAM)
    (taken,) = await sub.fetch(1, timeout=2.0)
    assert await jobs_waiting(js, MODEL) == 2  # delivered (in a bridge's hands) is not waiting
    await taken.ack()
    await sub.unsubscribe()
    assert await jobs_waiting(js, "org/other-model") is None
