"""Two scaler replicas on one real nats-server: exactly one leads and acts; a killed,
stopped or partitioned leader is replaced, never overlapping, and plans in flight resume."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from migserve_scaler.adapters.events import DURABLE
from migserve_scaler.app import Scaler
from migserve_scaler.leader import Elector, Lease, decode_lease
from migserve_scaler.metrics import ScalerMetrics
from migserve_scaler.settings import ScalerSettings, settings_from_env
from migserve_shared import subjects
from migserve_shared.bus import Buckets, EventPublisher, connect, open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.errors import ConfigError
from migserve_shared.ids import new_id, new_trace_id
from migserve_shared.messages import (
    CommandDone,
    CreateInstance,
    Demand,
    GpuState,
    InstanceReady,
    ModelSpec,
    NodeState,
    Plan,
    PlanStep,
    SliceState,
    decode_command,
    decode_plan,
    encode,
)
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

MODEL = "org/tiny-model"
OTHER = "org/other-model"
TTL = 1.5


# The cluster the scalers see ---------------------------------------------------------------
async def seed(buckets: Buckets) -> None:
    """node-1 is full, node-2 empty; MODEL and OTHER are registered."""
    full = [SliceState(gi_id=1, profile_id=0, profile="7g.40gb", start=0)]
    for name, slices in (("node-1", full), ("node-2", [])):
        gpu = GpuState(index=0, uuid=f"GPU-{name}", model="A100-SXM4-40GB", slices=slices)
        state = NodeState(node=name, gpus=[gpu], agent_id=f"agent-{name}")
        await buckets.nodes.put(subjects.node_key(name), encode(state))
    for model in (MODEL, OTHER):
        spec = ModelSpec(model_id=model, memory_mb=3000, tpot_slo_ms=50)
        await buckets.models.put(subjects.model_key(model), encode(spec))


def plan_in_flight(model: str) -> Plan:
    """A plan whose create step was marked sent by a leader that died before sending it."""
    now = time.time()
    step = PlanStep(
        op="create",
        command_id=new_id("cmd-"),
        instance_id=new_id("inst-"),
        node="node-2",
        profile="1g.5gb",
        start=4,
        status="sent",
    )
    return Plan(
        plan_id=new_id("plan-"),
        model_id=model,
        action="create",
        status="running",
        steps=[step],
        trace_id=new_trace_id(),
        created=now - 1,
        updated=now - 120,
    )


# Replicas ----------------------------------------------------------------------------------
@dataclass
class Replica:
    name: str
    nc: NATS
    scaler: Scaler
    metrics: ScalerMetrics
    stop: asyncio.Event
    task: asyncio.Task[None]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    async def kill(self) -> None:
        """Die without a word: no release, no drain (the lease must expire)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.nc.close()

    async def shut_down(self) -> None:
        """Stop as on SIGTERM: finish, release the lease, close."""
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
        await self.nc.close()


@dataclass
class Cluster:
    url: str
    replicas: list[Replica] = field(default_factory=list)
    overlaps: list[list[str]] = field(default_factory=list)

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.scaler.leading]

    async def start(self, name: str) -> Replica:
        nc = await connect(NatsSettings(url=self.url, name=name))
        settings = ScalerSettings(
            scaler_id=name,
            nats=NatsSettings(url=self.url),
            tick_interval_s=0.1,
            lease_ttl_s=TTL,
        )
        metrics = ScalerMetrics()
        scaler = Scaler(settings=settings, nc=nc, metrics=metrics)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(scaler.run(stop, ready=ready), name=f"test-{name}")
        replica = Replica(name, nc, scaler, metrics, stop, task)
        self.replicas.append(replica)
        await asyncio.wait_for(asyncio.shield(ready.wait()), 5)
        return replica

    async def watch_overlaps(self, stop: asyncio.Event) -> None:
        """Sample every replica's role; record any moment two lead at once."""
        while not stop.is_set():
            leading = [r.name for r in self.leaders()]
            if len(leading) > 1:
                self.overlaps.append(leading)
            await asyncio.sleep(0.005)

    async def one_leader(self, *, within: float, besides: Replica | None = None) -> Replica:
        """The one leader (a killed replica still counts itself leader until its
        deadline; ``besides`` waits for another one)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            leaders = [r for r in self.leaders() if r is not besides]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no single leader after {within} s: {self.leaders()}")


@asynccontextmanager
async def cluster(url: str, *names: str) -> AsyncIterator[Cluster]:
    c = Cluster(url)
    sampling = asyncio.Event()
    sampler = asyncio.create_task(c.watch_overlaps(sampling), name="test-sampler")
    try:
        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(c.start(name), name=f"test-start-{name}")
        yield c
    finally:
        sampling.set()
        await sampler
        for r in c.replicas:
            if not r.task.done():
                await r.shut_down()
            elif not r.nc.is_closed:
                await r.nc.close()
    assert not c.overlaps, f"two replicas led at once: {c.overlaps[:3]}"


# Helpers -----------------------------------------------------------------------------------
async def consumed(js: JetStreamContext) -> None:
    for _ in range(100):
        info = await js.consumer_info(subjects.EVENTS_STREAM, DURABLE)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"events not all consumed: {info}")


async def plan_when(buckets: Buckets, model: str, done: Callable[[Plan], bool]) -> Plan:
    for _ in range(100):
        entry = await buckets.plans.get(subjects.model_key(model))
        plan = decode_plan(entry.value or b"")
        if done(plan):
            return plan
        await asyncio.sleep(0.05)
    raise AssertionError(f"plan never reached the expected state: {plan}")


async def next_create(sub: Subscription) -> CreateInstance:
    cmd = decode_command((await sub.next_msg(timeout=5)).data)
    assert isinstance(cmd, CreateInstance)
    return cmd


async def lease_of(buckets: Buckets) -> Lease:
    return decode_lease((await buckets.leader.get(subjects.SCALER_LEASE_KEY)).value or b"")


# Replicas ----------------------------------------------------------------------------------
async def test_one_leader_acts_on_demand_once(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    async with cluster(nats_server.url, "scaler-a", "scaler-b") as c:
        leader = await c.one_leader(within=2)
        (follower,) = [r for r in c.replicas if r is not leader]
        lease = await lease_of(buckets)
        assert (lease.holder, lease.term, lease.ttl_s) == (leader.name, 1, TTL)

        trace = new_trace_id()
        await EventPublisher(js, source="test").publish(Demand(model_id=MODEL, trace_id=trace))
        cmd = await next_create(commands)
        assert cmd.trace_id == trace
        plan = await plan_when(buckets, MODEL, lambda p: p.status == "running")
        assert plan.plan_id == cmd.plan_id
        await consumed(js)
        await asyncio.sleep(TTL)  # several renewals: still one leader, nothing sent twice
        assert c.leaders() == [leader]
        assert commands.pending_msgs == 0, "a second CreateInstance was sent"
        history = await buckets.plans.history(subjects.model_key(MODEL))
        assert {decode_plan(e.value or b"").plan_id for e in history} == {plan.plan_id}

        assert leader.sample("migserve_scaler_events_total", {"kind": "demand"}) == 1
        assert follower.sample("migserve_scaler_events_total", {"kind": "demand"}) == 0
        assert leader.sample("migserve_scaler_leader") == 1
        assert follower.sample("migserve_scaler_leader") == 0
        assert follower.sample("migserve_scaler_leader_changes_total", {"change": "acquired"}) == 0
    await commands.unsubscribe()


async def test_killed_leader_is_replaced_after_ttl_and_plans_resume(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    publish = EventPublisher(js, source="test").publish
    async with cluster(nats_server.url, "scaler-a", "scaler-b") as c:
        old = await c.one_leader(within=2)
        trace = new_trace_id()
        await publish(Demand(model_id=MODEL, trace_id=trace))
        cmd = await next_create(commands)
        await consumed(js)

        await old.kill()
        killed = time.monotonic()
        # The old leader died after writing a plan whose command it never sent.
        orphan = plan_in_flight(OTHER)
        await buckets.plans.create(subjects.model_key(OTHER), encode(orphan))

        new = await c.one_leader(within=TTL + 2, besides=old)
        took = time.monotonic() - killed
        # the lease was renewed at most ttl/3 before the kill; the follower waits ttl from then
        assert TTL / 2 < took < TTL + 1.5, f"took over after {took:.2f} s"
        lease = await lease_of(buckets)
        assert (lease.holder, lease.term) == (new.name, 2)

        resent = await next_create(commands)  # the orphan's command, same id
        assert (resent.command_id, resent.plan_id) == (
            orphan.steps[0].command_id,
            orphan.plan_id,
        )
        assert resent.instance_id == orphan.steps[0].instance_id

        # The old leader's plan in flight finishes under the new one.
        await publish(CommandDone(command_id=cmd.command_id, node="node-2", trace_id=trace))
        await publish(
            InstanceReady(
                instance_id=cmd.instance_id, model_id=MODEL, node="node-2", trace_id=trace
            )
        )
        done = await plan_when(buckets, MODEL, lambda p: p.status == "done")
        assert done.plan_id == cmd.plan_id
        assert new.sample("migserve_scaler_leader_changes_total", {"change": "acquired"}) == 1
    await commands.unsubscribe()


async def test_stopped_leader_hands_over_at_once(nc: NATS, nats_server) -> None:
    js = nc.jetstream()
    buckets = await open_buckets(js)
    await seed(buckets)
    commands = await js.subscribe(subjects.agent_commands("node-2"), ordered_consumer=True)
    async with cluster(nats_server.url, "scaler-a", "scaler-b") as c:
        old = await c.one_leader(within=2)
        await old.shut_down()
        stopped = time.monotonic()
        assert old.sample("migserve_scaler_leader_changes_total", {"change": "released"}) == 1
        new = await c.one_leader(within=TTL)
        assert time.monotonic() - stopped < TTL / 2, "waited for the ttl despite the release"
        assert (await lease_of(buckets)).holder == new.name

        await EventPublisher(js, source="test").publish(Demand(model_id=MODEL, trace_id="t"))
        cmd = await next_create(commands)
        assert cmd.trace_id == "t"
        await consumed(js)
        assert commands.pending_msgs == 0
    await commands.unsubscribe()


# The elector alone -------------------------------------------------------------------------
class Partition:
    """A lease bucket that can be cut off: calls then hang like a lost network."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.healed = asyncio.Event()
        self.healed.set()

    async def _through(self) -> None:
        await self.healed.wait()

    async def get(self, key: str) -> KeyValue.Entry:
        await self._through()
        return await self._kv.get(key)

    async def create(self, key: str, value: bytes) -> int:
        await self._through()
        return await self._kv.create(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self._through()
        return await self._kv.update(key, value, last=last)


@asynccontextmanager
async def electing(*electors: Elector) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop), name=f"test-elector-{e.holder}") for e in electors]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for e in electors:
            await e.release()


async def test_partitioned_leader_stops_before_another_takes_over(nc: NATS) -> None:
    buckets = await open_buckets(nc.jetstream())
    cut = Partition(buckets.leader)
    a_metrics = ScalerMetrics()
    a = Elector(bucket=cut, holder="a", ttl_s=TTL, metrics=a_metrics)
    b = Elector(bucket=buckets.leader, holder="b", ttl_s=TTL, metrics=ScalerMetrics())
    async with electing(a):
        assert await asyncio.wait_for(a.wait_leader(asyncio.Event()), 2)
        async with electing(b):
            await asyncio.sleep(TTL / 2)
            assert a.is_leader and not b.is_leader
            cut.healed.clear()
            a_down = b_up = None
            started = time.monotonic()
            while b_up is None and time.monotonic() - started < TTL + 2:
                now = time.monotonic()
                assert not (a.is_leader and b.is_leader), "two leaders at once"
                if a_down is None and not a.is_leader:
                    a_down = now
                if b_up is None and b.is_leader:
                    b_up = now
                await asyncio.sleep(0.005)
            assert a_down is not None and b_up is not None, "b never took over"
            assert b_up >= a_down
            # b sent its takeover at least the margin (ttl/5) after a's deadline
            assert b.renewed_at - a.deadline >= TTL / 5 - 0.01, "the margin is gone"
            assert b.term == a.term + 1
            sample = a_metrics.registry.get_sample_value
            assert sample("migserve_scaler_leader_changes_total", {"change": "expired"}) == 1

            cut.healed.set()  # a comes back: it sees b's lease and follows
            await asyncio.sleep(TTL / 2)
            assert b.is_leader and not a.is_leader
            assert sample("migserve_scaler_leader_changes_total", {"change": "acquired"}) == 1


async def test_unreadable_lease_is_counted_and_taken_after_ttl(nc: NATS) -> None:
    buckets = await open_buckets(nc.jetstream())
    await buckets.leader.put(subjects.SCALER_LEASE_KEY, b"{not a lease")
    metrics = ScalerMetrics()
    elector = Elector(bucket=buckets.leader, holder="a", ttl_s=1.0, metrics=metrics)
    started = time.monotonic()
    async with electing(elector):
        assert await asyncio.wait_for(elector.wait_leader(asyncio.Event()), 3)
        assert time.monotonic() - started >= 1.0
    labels = {"source": subjects.KV_LEADER}
    assert metrics.registry.get_sample_value("migserve_scaler_bad_messages_total", labels) == 1
    released = await lease_of(buckets)
    assert (released.holder, released.term) == ("", 1)


# Settings ----------------------------------------------------------------------------------
def test_lease_ttl_setting() -> None:
    assert settings_from_env({}).lease_ttl_s == 10.0
    assert settings_from_env({"MIGSERVE_SCALER_LEASE_TTL_S": "4"}).lease_ttl_s == 4.0
    for bad in ("0.5", "16", "soon"):
        with pytest.raises(ConfigError, match="MIGSERVE_SCALER_LEASE_TTL_S"):
            settings_from_env({"MIGSERVE_SCALER_LEASE_TTL_S": bad})
    with pytest.raises(ValueError, match="lease ttl"):
        Elector(bucket=None, holder="x", ttl_s=60, metrics=ScalerMetrics())  # type: ignore[arg-type]
