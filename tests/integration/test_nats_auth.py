"""NATS authentication and per-role permissions against a real nats-server.

The server admits only the users ``permissions.stack_users`` renders (as the
local stack's does). Each test connects as roles and checks what the server
lets them do: the gateway can never put a command on the command stream nor
read it, an agent gets only its own node's commands, and every role's normal
operations pass without a single permission violation in the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from migserve_cli.nats_server import NatsServer
from migserve_scaler.adapters.events import ensure_events_consumer
from migserve_shared import subjects
from migserve_shared.bus import (
    STREAMS,
    EventPublisher,
    NatsConnectError,
    ReplyRouter,
    ReplySender,
    connect,
    ensure_jetstream,
    ensure_jobs_consumer,
    iterate_replies,
    kv_values,
    open_buckets,
    send_command,
)
from migserve_shared.env import NatsSettings
from migserve_shared.ids import new_id
from migserve_shared.messages import (
    CommandDone,
    Demand,
    InferenceJob,
    JobEnd,
    MetricsSnapshot,
    ModelSpec,
    NodeState,
    RetireInstance,
    ScaleDecided,
    SliceCreated,
    SloEvidence,
    decode_command,
    decode_job,
    encode,
    now,
)
from migserve_shared.permissions import Role, user_name
from migserve_watcher.adapters.jobs_queue import jobs_waiting
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

MODEL = "org/model-1"
Connect = Callable[..., contextlib.AbstractAsyncContextManager[NATS]]


@pytest.fixture
async def as_user(nats_auth_server: NatsServer) -> AsyncIterator[Connect]:
    """``async with as_user(Role.GATEWAY) as nc``; the admin has set JetStream up."""
    server = nats_auth_server
    assert server.auth is not None
    opened: list[NATS] = []

    @contextlib.asynccontextmanager
    async def open_as(role: Role, node: str | None = None) -> AsyncIterator[NATS]:
        name = user_name(role, node)
        assert server.auth is not None
        nc = await connect(server.auth.settings(server.url, name, name=f"test-{name}"))
        opened.append(nc)
        try:
            yield nc
        finally:
            await nc.close()

    async with open_as(Role.ADMIN) as admin:
        await ensure_jetstream(admin.jetstream())
    try:
        yield open_as
    finally:
        for nc in opened:
            if not nc.is_closed:
                await nc.close()


def violations(server: NatsServer) -> list[str]:
    assert server.log_file is not None
    text = server.log_file.read_text() if server.log_file.exists() else ""
    return [line for line in text.splitlines() if "Violation" in line]


def command(node: str) -> RetireInstance:
    return RetireInstance(command_id=new_id("cmd-"), instance_id=f"inst-on-{node}", issued_at=now())


async def stream_messages(admin: NATS, stream: str) -> int:
    return int((await admin.jetstream().stream_info(stream)).state.messages)


async def test_only_known_users_with_their_password_get_in(
    nats_auth_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_auth_server
    assert server.auth is not None
    secret = server.auth.password_file("gateway").read_text().strip()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NatsConnectError, match="refused a client without a user"):
        await connect(NatsSettings(url=server.url), connect_timeout=1)
    with pytest.raises(NatsConnectError, match=r"refused gateway: .*Authorization Violation"):
        await connect(NatsSettings(url=server.url, user="gateway", password="wrong"))
    nc = await connect(server.auth.settings(server.url, "gateway"))
    assert nc.is_connected
    await nc.close()
    assert secret not in caplog.text


async def test_gateway_cannot_publish_a_command(
    as_user: Connect, nats_auth_server: NatsServer
) -> None:
    async with as_user(Role.ADMIN) as admin, as_user(Role.GATEWAY) as gw:
        js = gw.jetstream(timeout=0.5)
        with pytest.raises(TimeoutError):  # the server drops it: no ack ever comes
            await send_command(js, "node-1", command("node-1"))
        await gw.publish(subjects.agent_commands("node-1"), encode(command("node-1")))
        await gw.flush()
        assert await stream_messages(admin, subjects.COMMANDS_STREAM) == 0
    assert any('Subject "llm.cmd.agent.node-1"' in v for v in violations(nats_auth_server))


async def test_gateway_cannot_create_a_consumer_on_the_command_stream(
    as_user: Connect,
) -> None:
    async with as_user(Role.ADMIN) as admin, as_user(Role.GATEWAY) as gw:
        js = gw.jetstream(timeout=0.5)
        attempts = [
            ConsumerConfig(durable_name="spy", ack_policy=AckPolicy.EXPLICIT),
            ConsumerConfig(
                name="agent-node-1",
                durable_name="agent-node-1",
                filter_subject=subjects.agent_commands("node-1"),
            ),
            ConsumerConfig(ack_policy=AckPolicy.NONE),  # an ephemeral one
        ]
        for config in attempts:
            with pytest.raises(TimeoutError):
                await js.add_consumer(subjects.COMMANDS_STREAM, config=config)
        with pytest.raises(TimeoutError):  # nor read the stream directly
            await js.get_msg(subjects.COMMANDS_STREAM, seq=1)
        info = await admin.jetstream().stream_info(subjects.COMMANDS_STREAM)
        assert info.state.consumer_count == 0


async def test_an_agent_gets_only_its_own_nodes_commands(
    as_user: Connect, nats_auth_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        as_user(Role.SCALER) as scaler,
        as_user(Role.AGENT, "node-1") as agent1,
        as_user(Role.AGENT, "node-2") as agent2,
    ):
        sent = {node: command(node) for node in ("node-1", "node-2")}
        for node, cmd in sent.items():
            await send_command(scaler.jetstream(), node, cmd)
        # node-2's agent binds its consumer, as migserve_agent.commands does
        await agent2.jetstream().add_consumer(
            subjects.COMMANDS_STREAM, config=_agent_consumer("node-2")
        )

        js1 = agent1.jetstream(timeout=0.5)
        await js1.add_consumer(subjects.COMMANDS_STREAM, config=_agent_consumer("node-1"))
        own = await js1.pull_subscribe_bind(
            subjects.agent_consumer("node-1"), subjects.COMMANDS_STREAM
        )
        msgs = await own.fetch(5, timeout=1)
        assert [decode_command(m.data).command_id for m in msgs] == [sent["node-1"].command_id]
        await msgs[0].ack()

        # node-2's commands: not through node-2's consumer, not through a new
        # consumer of any name or filter, not from the stream, not on the wire
        other = await js1.pull_subscribe_bind(
            subjects.agent_consumer("node-2"), subjects.COMMANDS_STREAM
        )
        with pytest.raises(TimeoutError):
            await other.fetch(1, timeout=0.5)
        for config in (
            _agent_consumer("node-2"),
            ConsumerConfig(
                name=subjects.agent_consumer("node-1"),
                durable_name=subjects.agent_consumer("node-1"),
                filter_subject=subjects.agent_commands("node-2"),
            ),
            ConsumerConfig(durable_name="agent-node-1-all"),
        ):
            with pytest.raises(TimeoutError):
                await js1.add_consumer(subjects.COMMANDS_STREAM, config=config)
        with pytest.raises(TimeoutError):
            await js1.get_last_msg(subjects.COMMANDS_STREAM, subjects.agent_commands("node-2"))
        caplog.set_level(logging.WARNING)
        wire = await agent1.subscribe(subjects.COMMANDS_WILDCARD)
        inboxes = await agent1.subscribe("_INBOX.>")
        await agent1.flush()
        await send_command(scaler.jetstream(), "node-2", command("node-2"))
        fetched = await agent2.jetstream().pull_subscribe_bind(
            subjects.agent_consumer("node-2"), subjects.COMMANDS_STREAM
        )
        assert len(await fetched.fetch(5, timeout=1)) == 2  # node-2's agent gets both
        for sub in (wire, inboxes):
            with pytest.raises(TimeoutError):
                await sub.next_msg(timeout=0.3)
    assert "permissions violation for subscription" in caplog.text.lower()


def _agent_consumer(node: str) -> ConsumerConfig:
    durable = subjects.agent_consumer(node)
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subjects.agent_commands(node),
        ack_policy=AckPolicy.EXPLICIT,
    )


async def test_every_role_does_its_work_without_a_violation(
    as_user: Connect, nats_auth_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    spec = ModelSpec(model_id=MODEL, memory_mb=1024, tpot_slo_ms=50)
    async with (
        as_user(Role.GATEWAY) as gw,
        as_user(Role.BRIDGE) as bridge,
        as_user(Role.SCALER) as scaler,
        as_user(Role.WATCHER) as watcher,
        as_user(Role.AGENT, "node-1") as agent,
    ):
        for nc in (gw, bridge, scaler, watcher, agent):
            await ensure_jetstream(nc.jetstream())  # streams exist: nothing to do
            if nc is not bridge:
                await open_buckets(nc.jetstream())

        # gateway: registry, demand, a job, its replies and a cancel
        gjs = gw.jetstream()
        gb = await open_buckets(gjs)
        await gb.models.put(subjects.model_key(MODEL), encode(spec))
        gevents = EventPublisher(gjs, source="gateway-1")
        await gevents.publish(Demand(model_id=MODEL))
        router = ReplyRouter(gw)
        await router.start()
        reply_to, queue = router.open()
        job = InferenceJob(job_id=new_id(), model=MODEL, reply_to=reply_to, deadline=now() + 30)
        await gjs.publish(subjects.infer(MODEL), encode(job))

        # bridge: takes it, answers on the gateway's inbox, hears the cancel
        bjs = bridge.jetstream()
        durable = await ensure_jobs_consumer(bjs, MODEL, ack_wait=30)
        cancels = await bridge.subscribe(subjects.CANCEL_WILDCARD)
        await bridge.flush()
        pull = await bjs.pull_subscribe_bind(durable, subjects.JOBS_STREAM)
        [msg] = await pull.fetch(1, timeout=2)
        taken = decode_job(msg.data)
        await msg.ack()
        await ReplySender(bridge, taken.reply_to).send(JobEnd(completion_tokens=1))
        replies = [r async for r in iterate_replies(queue, first_timeout=2, idle_timeout=2)]
        assert replies == [JobEnd(completion_tokens=1)]
        await gw.publish(subjects.cancel(job.job_id), b"")
        assert (await cancels.next_msg(timeout=2)).subject == subjects.cancel(job.job_id)
        await router.stop()

        # watcher: the jobs backlog, models, instances, metrics events
        wjs = watcher.jetstream()
        assert await jobs_waiting(wjs, MODEL) == 0
        wb = await open_buckets(wjs)
        assert len(await kv_values(wb.models)) == 1
        await EventPublisher(wjs, source="watcher").publish(
            MetricsSnapshot(model_id=MODEL, evidence=SloEvidence(slo_ms=50))
        )

        # scaler: its events consumer, every bucket, plans and lease, a command
        sjs = scaler.jetstream()
        events_durable = await ensure_events_consumer(sjs)
        epull = await sjs.pull_subscribe_bind(events_durable, subjects.EVENTS_STREAM)
        for evt in await epull.fetch(10, timeout=1):
            await evt.ack()
        sb = await open_buckets(sjs)
        for kv in (sb.models, sb.nodes, sb.instances, sb.plans, sb.leader):
            await kv_values(kv)
        await sb.plans.create(subjects.model_key(MODEL), b"{}")
        await sb.leader.put(subjects.SCALER_LEASE_KEY, b"scaler-1")
        await EventPublisher(sjs, source="scaler-1").publish(
            ScaleDecided(model_id=MODEL, plan_id="p1", action="create")
        )
        await send_command(sjs, "node-1", command("node-1"))

        # agent: its commands, its node's inventory, instance records, events
        ajs = agent.jetstream()
        await ajs.add_consumer(subjects.COMMANDS_STREAM, config=_agent_consumer("node-1"))
        cmds = await ajs.pull_subscribe_bind(
            subjects.agent_consumer("node-1"), subjects.COMMANDS_STREAM
        )
        [cmsg] = await cmds.fetch(1, timeout=2)
        await cmsg.in_progress()
        await cmsg.ack()
        ab = await open_buckets(ajs)
        await ab.nodes.put(subjects.node_key("node-1"), encode(NodeState(node="node-1")))
        key = subjects.instance_key("inst-1")
        rev = await ab.instances.create(key, b"{}")
        await ab.instances.update(key, b"{}", last=rev)
        assert len(await kv_values(ab.instances)) == 1
        await ab.instances.delete(key)
        apub = EventPublisher(ajs, source="mig-agent/node-1")
        await apub.publish(SliceCreated(node="node-1", gpu_index=0, profile="1g.5gb", start=0))
        await apub.publish(
            CommandDone(command_id=decode_command(cmsg.data).command_id, node="node-1")
        )

        # ... but not another node's inventory
        with pytest.raises(TimeoutError):
            await agent.jetstream(timeout=0.5).publish(
                f"$KV.{subjects.KV_NODES}.{subjects.node_key('node-2')}", b"{}"
            )
    found = [v for v in violations(nats_auth_server) if "node-2" not in v]
    assert not found, "\n".join(found)
    assert not re.search(r"may not (create|update)", caplog.text), caplog.text


async def test_the_monitoring_endpoints_show_no_password(nats_auth_server: NatsServer) -> None:
    server = nats_auth_server
    assert server.auth is not None
    nc = await connect(server.auth.settings(server.url, "gateway"))
    try:
        async with httpx.AsyncClient(base_url=server.monitor_url, timeout=5) as http:
            pages = [
                (await http.get(path)).text
                for path in ("/varz", "/connz?auth=true&subs=true", "/accountz")
            ]
    finally:
        await nc.close()
    assert '"authorized_user": "gateway"' in pages[1] or '"authorized_user":"gateway"' in pages[1]
    for name, path in server.auth.password_files.items():
        secret = path.read_text().strip()
        assert all(secret not in page for page in pages), name


async def test_a_gateway_job_reply_cannot_come_from_the_agent(as_user: Connect) -> None:
    """Only bridges may answer the gateway: an agent's publish to its inbox is dropped."""
    async with as_user(Role.GATEWAY) as gw, as_user(Role.AGENT, "node-1") as agent:
        router = ReplyRouter(gw)
        await router.start()
        reply_to, queue = router.open()
        assert reply_to.startswith("_INBOX.gateway.")
        await ReplySender(agent, reply_to).send(JobEnd())
        await agent.flush()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.3)
        await router.stop()


async def test_only_the_scaler_updates_a_stream_whose_settings_changed(
    as_user: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = next(s for s in STREAMS if s.name == subjects.JOBS_STREAM)
    async with as_user(Role.ADMIN) as admin:
        await admin.jetstream().update_stream(config=dataclasses.replace(jobs, max_age=60.0))
    caplog.set_level(logging.WARNING)
    async with as_user(Role.GATEWAY) as gw:
        await ensure_jetstream(gw.jetstream(timeout=0.5))  # may not: warns, goes on
    assert f"stream {subjects.JOBS_STREAM} differs" in caplog.text
    async with as_user(Role.SCALER) as scaler:
        await ensure_jetstream(scaler.jetstream())
        info = await scaler.jetstream().stream_info(subjects.JOBS_STREAM)
    assert info.config.max_age == jobs.max_age
