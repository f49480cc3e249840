"""The scaler against a real nats-server: a failed instance is replaced, min_replicas is kept."""

from __future__ import annotations

import asyncio

import msgspec
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.messages import (
    CreateInstance,
    InstanceFailed,
    InstanceRecord,
    ModelSpec,
    ScaleDecided,
    decode_command,
    encode,
)
from nats.aio.client import Client as NATS
from test_scaler import MODEL, next_event, publisher, running_scaler, seed

LOST = InstanceRecord(
    instance_id="inst-lost",
    model_id=MODEL,
    node="node-2",
    gpu_index=0,
    profile="2g.10gb",
    start=0,
    state="ready",
    trace_id="a" * 32,
)


async def test_instance_failed_outside_a_plan_is_replaced(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    key = subjects.instance_key(LOST.instance_id)
    await buckets.instances.put(key, encode(LOST))
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    decided = await js.subscribe(subjects.events_of_kind("scale.decided"), ordered_consumer=True)
    async with running_scaler(nc, nats_server.url):
        await asyncio.sleep(0.5)  # a few ticks: the scaler has seen the instance live
        assert commands.pending_msgs == 0
        # the agent: final state, delete, then the event (as instances.InstanceManager.fail)
        await buckets.instances.put(key, encode(msgspec.structs.replace(LOST, state="failed")))
        await buckets.instances.delete(key)
        trace = "f" * 32
        await publisher(js)(
            InstanceFailed(
                instance_id=LOST.instance_id, model_id=MODEL, node="node-2",
                profile=LOST.profile, reason="engine exited", trace_id=trace,
            )
        )  # fmt: skip
        cmd = decode_command((await commands.next_msg(timeout=5)).data)
        assert isinstance(cmd, CreateInstance)
        assert cmd.profile == "2g.10gb" and cmd.trace_id in (trace, LOST.trace_id)
        evt = await next_event(decided, ScaleDecided)
        assert isinstance(evt, ScaleDecided) and evt.action == "create"
        assert evt.reason.startswith("replace failed instance inst-lost:")
        await asyncio.sleep(0.5)  # event and ticks both saw the loss: still one plan
        assert commands.pending_msgs == 0 and decided.pending_msgs == 0
    await commands.unsubscribe()
    await decided.unsubscribe()


async def test_min_replicas_is_reached_without_demand(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    async with running_scaler(nc, nats_server.url):
        spec = ModelSpec(model_id=MODEL, memory_mb=3000, tpot_slo_ms=50, min_replicas=1)
        await buckets.models.put(subjects.model_key(MODEL), encode(spec))
        cmd = decode_command((await commands.next_msg(timeout=5)).data)
        assert isinstance(cmd, CreateInstance) and cmd.model.model_id == MODEL
        await asyncio.sleep(0.5)
        assert commands.pending_msgs == 0  # one plan at a time
    await commands.unsubscribe()
