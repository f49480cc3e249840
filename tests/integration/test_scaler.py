"""The scaler against a real nats-server: demand -> plan, command, event; results -> plan done."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from migserve_scaler.adapters.events import DURABLE
from migserve_scaler.app import Scaler
from migserve_scaler.metrics import ScalerMetrics
from migserve_scaler.settings import ScalerSettings
from migserve_shared import subjects
from migserve_shared.bus import Buckets, EventPublisher, open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.errors import ErrorCode
from migserve_shared.ids import new_trace_id
from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    CreateInstance,
    Demand,
    Event,
    GpuState,
    InstanceReady,
    ModelSpec,
    NodeState,
    Plan,
    ScaleDecided,
    ScaleFailed,
    SliceState,
    decode_command,
    decode_event,
    decode_plan,
    encode,
)
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

MODEL = "org/tiny-model"


def a100_node(name: str, *, full: bool) -> NodeState:
    slices = [SliceState(gi_id=1, profile_id=0, profile="7g.40gb", start=0)] if full else []
    gpu = GpuState(index=0, uuid=f"GPU-{name}", model="A100-SXM4-40GB", slices=slices)
    return NodeState(node=name, gpus=[gpu], agent_id=f"agent-{name}")


async def seed(buckets: Buckets) -> None:
    """node-1 is full, node-2 empty; MODEL is registered."""
    for state in (a100_node("node-1", full=True), a100_node("node-2", full=False)):
        await buckets.nodes.put(subjects.node_key(state.node), encode(state))
    spec = ModelSpec(model_id=MODEL, memory_mb=3000, tpot_slo_ms=50)
    await buckets.models.put(subjects.model_key(MODEL), encode(spec))


@asynccontextmanager
async def running_scaler(
    nc: NATS, url: str, *, plan_timeout_s: float = 180
) -> AsyncIterator[ScalerMetrics]:
    settings = ScalerSettings(
        scaler_id="scaler-test",
        nats=NatsSettings(url=url),
        plan_timeout_s=plan_timeout_s,
        tick_interval_s=0.1,
    )
    metrics = ScalerMetrics()
    scaler = Scaler(settings=settings, nc=nc, metrics=metrics)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(scaler.run(stop, ready=ready), name="test-scaler")
    try:
        await asyncio.wait_for(asyncio.shield(ready.wait()), 5)
        yield metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def consumed(js: JetStreamContext) -> None:
    """Wait until the scaler has taken and acknowledged every event published so far."""
    for _ in range(100):
        info = await js.consumer_info(subjects.EVENTS_STREAM, DURABLE)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"scaler did not consume every event: {info}")


async def next_event(sub: Subscription, kind: type, *, within: float = 5) -> Event:
    while True:
        evt = decode_event((await sub.next_msg(timeout=within)).data)
        if isinstance(evt, kind):
            return evt


async def plan_when(buckets: Buckets, done: Callable[[Plan], bool], *, within: float = 5) -> Plan:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        entry = await buckets.plans.get(subjects.model_key(MODEL))
        plan = decode_plan(entry.value or b"")
        if done(plan):
            return plan
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"plan never reached the expected state: {plan}")
        await asyncio.sleep(0.05)


def publisher(js: JetStreamContext) -> Callable[[Event], Awaitable[None]]:
    return EventPublisher(js, source="test").publish


async def test_demand_to_command_event_plan_then_done(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    decided = await js.subscribe(subjects.events_of_kind("scale.decided"), ordered_consumer=True)
    publish = publisher(js)
    trace = new_trace_id()
    async with running_scaler(nc, nats_server.url):
        await publish(Demand(model_id=MODEL, trace_id=trace))
        await publish(Demand(model_id=MODEL, trace_id=new_trace_id()))  # duplicate demand

        cmd = decode_command((await commands.next_msg(timeout=5)).data)
        assert isinstance(cmd, CreateInstance)
        assert (cmd.profile, cmd.start, cmd.gpu_index) == ("1g.5gb", 6, 0)
        assert cmd.trace_id == trace and cmd.model.model_id == MODEL

        evt = await next_event(decided, ScaleDecided)
        assert isinstance(evt, ScaleDecided)
        assert evt.trace_id == trace and evt.source == "scaler-test"
        assert (evt.node, evt.instance_id, evt.plan_id) == ("node-2", cmd.instance_id, cmd.plan_id)

        plan = await plan_when(buckets, lambda p: p.status == "running")
        assert plan.plan_id == cmd.plan_id and plan.trace_id == trace
        assert [s.command_id for s in plan.steps] == [cmd.command_id]

        await consumed(js)
        assert commands.pending_msgs == 0, "the duplicate demand made a second command"
        assert decided.pending_msgs == 0, "the duplicate demand made a second decision"

        await publish(CommandDone(command_id=cmd.command_id, node="node-2", trace_id=trace))
        await publish(
            InstanceReady(
                instance_id=cmd.instance_id, model_id=MODEL, node="node-2", trace_id=trace
            )
        )
        done = await plan_when(buckets, lambda p: p.status == "done")
        assert done.plan_id == cmd.plan_id and done.steps[0].status == "done"
    await commands.unsubscribe()
    await decided.unsubscribe()


async def test_failed_command_fails_plan_and_bad_or_unknown_input_is_survived(
    nc: NATS, nats_server
) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    await buckets.nodes.put("node-bad", b'{"node": 42}')  # a bad value is skipped, not fatal
    failed = await js.subscribe(subjects.events_of_kind("scale.failed"), ordered_consumer=True)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    publish = publisher(js)
    async with running_scaler(nc, nats_server.url) as metrics:
        await js.publish(subjects.event("demand", MODEL), b"{not json")
        await publish(Demand(model_id="org/unknown", trace_id="u1"))
        await publish(Demand(model_id="org/unknown", trace_id="u2"))
        unknown = await next_event(failed, ScaleFailed)
        assert isinstance(unknown, ScaleFailed)
        assert unknown.code is ErrorCode.UNKNOWN_MODEL and unknown.trace_id == "u1"

        trace = new_trace_id()
        await publish(Demand(model_id=MODEL, trace_id=trace))
        cmd = decode_command((await commands.next_msg(timeout=5)).data)
        await publish(
            CommandFailed(
                command_id=cmd.command_id,
                node="node-2",
                code=ErrorCode.INSUFFICIENT_RESOURCES,
                reason="1g.5gb at 6 overlaps",
            )
        )
        evt = await next_event(failed, ScaleFailed)
        assert isinstance(evt, ScaleFailed)
        assert evt.code is ErrorCode.INSUFFICIENT_RESOURCES and "overlaps" in evt.reason
        assert evt.trace_id == trace and evt.plan_id == cmd.plan_id
        plan = await plan_when(buckets, lambda p: p.status == "failed")
        assert plan.steps[0].status == "failed"
        await consumed(js)
        assert failed.pending_msgs == 0, "unknown model reported twice within a minute"
    sample = metrics.registry.get_sample_value
    assert sample("migserve_scaler_bad_messages_total", {"source": "events"}) == 1
    assert sample("migserve_scaler_bad_messages_total", {"source": subjects.KV_NODES}) == 1
    await failed.unsubscribe()
    await commands.unsubscribe()


async def test_plan_survives_restart_and_times_out(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    failed = await js.subscribe(subjects.events_of_kind("scale.failed"), ordered_consumer=True)
    publish = publisher(js)
    async with running_scaler(nc, nats_server.url):
        await publish(Demand(model_id=MODEL, trace_id="r1"))
        await commands.next_msg(timeout=5)
        await consumed(js)
    # a new scaler rebuilds its view from KV: the plan in flight blocks a second one
    async with running_scaler(nc, nats_server.url, plan_timeout_s=1.5):
        await publish(Demand(model_id=MODEL, trace_id="r2"))
        await consumed(js)
        assert commands.pending_msgs == 0
        evt = await next_event(failed, ScaleFailed)
        assert isinstance(evt, ScaleFailed)
        assert evt.code is ErrorCode.TIMEOUT and evt.trace_id == "r1"
        # the create step failed; the plan itself may still be rolling back
        await plan_when(buckets, lambda p: p.steps[0].status == "failed")
    await commands.unsubscribe()
    await failed.unsubscribe()


async def test_main_runs_and_stops_cleanly_on_sigterm(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    env = {
        **os.environ,
        "MIGSERVE_NATS_URL": nats_server.url,
        "MIGSERVE_SCALER_ID": "scaler-main",
        "MIGSERVE_LOG_FORMAT": "text",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "migserve_scaler", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(200):  # the durable consumer exists once the view is loaded
            with contextlib.suppress(NotFoundError):
                await js.consumer_info(subjects.EVENTS_STREAM, DURABLE)
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the scaler never created its consumer")
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert b"scaler scaler-main stopped" in stderr and b"Traceback" not in stderr
