"""The agent executes commands from its durable consumer against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from migserve_agent.agent import Agent
from migserve_agent.gpu.simulated import SimFaults, SimulatedGpuBackend
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.bus import ReplyRouter, iterate_replies, send_command
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    ChatMessage,
    CommandDone,
    CommandFailed,
    InferenceJob,
    InstanceFailed,
    InstanceReady,
    JobAccepted,
    JobEnd,
    SamplingParams,
    TokenChunk,
    encode,
    now,
)
from nats.aio.client import Client as NATS
from test_agent_support import (
    MODEL,
    NODE,
    REAL_BRIDGE,
    EventLog,
    agent_settings,
    alive,
    create_command,
    events_fixture,
    instance_record,
    node_state,
    retire_command,
    running_agent,
    spec,
    state_dir_fixture,
)

state_dir = state_dir_fixture()
events = events_fixture()


@pytest.fixture
async def agent(nc: NATS, nats_server: NatsServer, state_dir: Path) -> AsyncIterator[Agent]:
    async with running_agent(agent_settings(state_dir, nats_server.url), nc) as running:
        yield running


async def _chat(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert resp.status_code == 200, resp.text
        content: str = resp.json()["choices"][0]["message"]["content"]
        return content


async def test_create_instance_makes_slice_engine_and_record(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    cmd = create_command(profile="1g.5gb", start=6)
    await send_command(nc.jetstream(), NODE, cmd)

    done = await events.wait_for("command.done", command_id=cmd.command_id)
    assert isinstance(done, CommandDone) and not done.duplicate
    story = events.kinds(trace_id=cmd.trace_id)
    assert story.index("slice.created") < story.index("instance.starting")
    assert story.index("instance.starting") < story.index("instance.ready")
    assert story.index("instance.ready") < story.index("command.done")
    ready = events.of("instance.ready", instance_id=cmd.instance_id)[0]
    assert isinstance(ready, InstanceReady) and ready.startup_s > 0

    record = await instance_record(nc, cmd.instance_id)
    assert record is not None
    assert (record.state, record.node, record.profile, record.start) == ("ready", NODE, "1g.5gb", 6)
    assert record.model_id == MODEL and record.trace_id == cmd.trace_id
    assert record.slice_uuid.startswith("MIG-")
    assert record.slots == 4  # 4 per compute slice
    assert alive(record.engine_pid) and alive(record.bridge_pid)
    assert await _chat(record.engine_url)

    node = await node_state(nc)
    [gpu] = node.gpus
    assert gpu.model == "A100-SXM4-40GB"
    [slice_] = gpu.slices
    assert (slice_.profile, slice_.start, slice_.uuid) == ("1g.5gb", 6, record.slice_uuid)
    assert slice_.instance_id == cmd.instance_id and slice_.ours
    assert events.of("node.inventory", trace_id=cmd.trace_id)
    assert agent.metrics.value("migserve_agent_commands_total",
                               {"type": "create_instance", "outcome": "done"}) == 1  # fmt: skip


async def test_duplicate_command_does_nothing(nc: NATS, agent: Agent, events: EventLog) -> None:
    js = nc.jetstream()
    cmd = create_command()
    await send_command(js, NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    # the same command again, past JetStream's de-duplication (as a redelivery would be)
    await js.publish(subjects.agent_commands(NODE), encode(cmd), headers={"Nats-Msg-Id": "again"})
    await events.wait_until(lambda: len(events.of("command.done", command_id=cmd.command_id)) == 2)

    first, second = events.of("command.done", command_id=cmd.command_id)
    assert isinstance(first, CommandDone) and isinstance(second, CommandDone)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.trace_id == cmd.trace_id
    assert len(events.of("slice.created")) == 1
    assert len(events.of("instance.ready")) == 1
    assert len((await node_state(nc)).gpus[0].slices) == 1
    # a different command for the same instance does nothing either
    again = create_command(instance_id=cmd.instance_id)
    await send_command(js, NODE, again)
    reply = await events.wait_for("command.done", command_id=again.command_id)
    assert isinstance(reply, CommandDone) and reply.duplicate
    assert len(events.of("slice.created")) == 1


async def test_create_redelivered_after_retire_does_not_bring_the_instance_back(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    js = nc.jetstream()
    cmd = create_command()
    await send_command(js, NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    retire = retire_command(cmd.instance_id)
    await send_command(js, NODE, retire)
    await events.wait_for("command.done", command_id=retire.command_id)
    await js.publish(subjects.agent_commands(NODE), encode(cmd), headers={"Nats-Msg-Id": "late"})
    await events.wait_until(lambda: len(events.of("command.done", command_id=cmd.command_id)) == 2)
    again = events.of("command.done", command_id=cmd.command_id)[1]
    assert isinstance(again, CommandDone) and again.duplicate
    assert len(events.of("slice.created")) == 1
    assert await instance_record(nc, cmd.instance_id) is None
    assert (await node_state(nc)).gpus[0].slices == []


async def test_failed_command_repeated_gets_the_same_failure(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    assert isinstance(agent.backend, SimulatedGpuBackend)
    agent.backend.inject(SimFaults(fail_create=1))
    js = nc.jetstream()
    cmd = create_command()
    await send_command(js, NODE, cmd)
    first = await events.wait_for("command.failed", command_id=cmd.command_id)
    await js.publish(subjects.agent_commands(NODE), encode(cmd), headers={"Nats-Msg-Id": "2"})
    await events.wait_until(
        lambda: len(events.of("command.failed", command_id=cmd.command_id)) == 2
    )
    second = events.of("command.failed", command_id=cmd.command_id)[1]
    assert isinstance(first, CommandFailed) and isinstance(second, CommandFailed)
    assert first.code == second.code == ErrorCode.INSUFFICIENT_RESOURCES
    assert second.reason == first.reason and "injected" in first.reason
    assert not events.of("slice.created")  # not retried, although it would fit now
    assert len(events.of("instance.failed")) == 1
    assert (
        agent.metrics.value(
            "migserve_agent_commands_total", {"type": "create_instance", "outcome": "duplicate"}
        )
        == 1
    )


async def test_retire_removes_engine_bridge_slice_and_record(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    js = nc.jetstream()
    cmd = create_command(profile="3g.20gb", start=4)
    await send_command(js, NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    record = await instance_record(nc, cmd.instance_id)
    assert record is not None

    retire = retire_command(cmd.instance_id)
    await send_command(js, NODE, retire)
    done = await events.wait_for("command.done", command_id=retire.command_id)
    assert isinstance(done, CommandDone) and not done.duplicate
    story = events.kinds(trace_id=retire.trace_id)
    assert story == [
        "instance.draining",
        "slice.destroyed",
        "node.inventory",
        "instance.stopped",
        "command.done",
    ], story
    assert await instance_record(nc, cmd.instance_id) is None
    assert (await node_state(nc)).gpus[0].slices == []
    assert not alive(record.engine_pid) and not alive(record.bridge_pid)
    with pytest.raises(httpx.HTTPError):
        await _chat(record.engine_url)
    # retiring again: nothing left to do
    again = retire_command(cmd.instance_id)
    await send_command(js, NODE, again)
    reply = await events.wait_for("command.done", command_id=again.command_id)
    assert isinstance(reply, CommandDone) and reply.duplicate


async def test_bad_commands_are_counted_and_do_not_block(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    js = nc.jetstream()
    subject = subjects.agent_commands(NODE)
    await js.publish(subject, b"not json at all")
    await js.publish(subject, b'{"type": "create_instance", "command_id": "x"}')
    await js.publish(subject, b'{"type": "format_disk", "command_id": "y"}')
    cmd = create_command()
    await send_command(js, NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    assert agent.metrics.value("migserve_agent_bad_commands_total") == 3
    for _ in range(50):  # the ack follows the command.done event
        info = await js.consumer_info(subjects.COMMANDS_STREAM, subjects.agent_consumer(NODE))
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


@pytest.mark.parametrize(
    "case",
    [
        ("3g.20gb", 2, 0, 1000, ErrorCode.INSUFFICIENT_RESOURCES),  # not an allowed start
        ("1g.5gb", 7, 0, 1000, ErrorCode.INSUFFICIENT_RESOURCES),  # 1g never at 7
        ("5g.50gb", 0, 0, 1000, ErrorCode.NOT_SUPPORTED),  # no such profile
        ("1g.5gb", 0, 3, 1000, ErrorCode.NOT_FOUND),  # no such GPU
        ("1g.5gb", 0, 0, 9000, ErrorCode.INSUFFICIENT_RESOURCES),  # model does not fit
    ],
)
async def test_create_refused_before_anything_is_made(
    nc: NATS, agent: Agent, events: EventLog, case: tuple[str, int, int, int, ErrorCode]
) -> None:
    profile, start, gpu_index, memory_mb, code = case
    cmd = create_command(
        profile=profile, start=start, gpu_index=gpu_index, model=spec(memory_mb=memory_mb)
    )
    await send_command(nc.jetstream(), NODE, cmd)
    failed = await events.wait_for("command.failed", command_id=cmd.command_id)
    assert isinstance(failed, CommandFailed)
    assert failed.code == code, failed.reason
    assert failed.trace_id == cmd.trace_id and failed.reason
    instance_failed = events.of("instance.failed", instance_id=cmd.instance_id)
    assert isinstance(instance_failed[0], InstanceFailed) and instance_failed[0].code == code
    assert not events.of("slice.created")
    assert await instance_record(nc, cmd.instance_id) is None


async def test_occupied_placement_is_refused(nc: NATS, agent: Agent, events: EventLog) -> None:
    js = nc.jetstream()
    first = create_command(profile="4g.20gb", start=0)
    await send_command(js, NODE, first)
    await events.wait_for("command.done", command_id=first.command_id)
    clash = create_command(profile="2g.10gb", start=2)
    await send_command(js, NODE, clash)
    failed = await events.wait_for("command.failed", command_id=clash.command_id)
    assert isinstance(failed, CommandFailed)
    assert failed.code == ErrorCode.INSUFFICIENT_RESOURCES and "overlaps" in failed.reason
    assert [s.profile for s in (await node_state(nc)).gpus[0].slices] == ["4g.20gb"]


async def test_engine_that_fails_to_start_is_cleaned_up(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    # a sim engine setting the engine itself rejects (max-context below default-max-tokens)
    bad = spec(engine_args={"max_context": "8", "default_max_tokens": "64"})
    cmd = create_command(model=bad)
    await send_command(nc.jetstream(), NODE, cmd)
    failed = await events.wait_for("command.failed", command_id=cmd.command_id)
    assert isinstance(failed, CommandFailed)
    assert failed.code == ErrorCode.ENGINE_FAILED, failed.reason
    assert "exited while starting" in failed.reason
    assert events.kinds(trace_id=cmd.trace_id)[:3] == [
        "slice.created",
        "node.inventory",
        "instance.starting",
    ]
    assert events.of("slice.destroyed", instance_id=cmd.instance_id)
    assert events.of("instance.failed", instance_id=cmd.instance_id)
    assert await instance_record(nc, cmd.instance_id) is None
    assert (await node_state(nc)).gpus[0].slices == []
    assert agent.runtime.known() == {}


async def test_engine_args_the_adapter_refuses(nc: NATS, agent: Agent, events: EventLog) -> None:
    cmd = create_command(model=spec(engine_args={"rm_rf": "/"}))
    await send_command(nc.jetstream(), NODE, cmd)
    failed = await events.wait_for("command.failed", command_id=cmd.command_id)
    assert isinstance(failed, CommandFailed)
    assert failed.code == ErrorCode.BAD_REQUEST and "rm_rf" in failed.reason
    assert not events.of("slice.created")


async def test_dead_engine_fails_the_instance_and_frees_the_slice(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    cmd = create_command()
    await send_command(nc.jetstream(), NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    record = await instance_record(nc, cmd.instance_id)
    assert record is not None and record.engine_pid is not None
    os.kill(record.engine_pid, signal.SIGKILL)
    failed = await events.wait_for("instance.failed", instance_id=cmd.instance_id)
    assert isinstance(failed, InstanceFailed)
    assert failed.code == ErrorCode.ENGINE_FAILED and "engine" in failed.reason
    assert failed.trace_id == cmd.trace_id
    await events.wait_for("slice.destroyed", instance_id=cmd.instance_id)
    assert await instance_record(nc, cmd.instance_id) is None
    assert not alive(record.bridge_pid)
    assert (await node_state(nc)).gpus[0].slices == []


async def test_slow_start_does_not_block_a_retire(nc: NATS, agent: Agent, events: EventLog) -> None:
    js = nc.jetstream()
    quick = create_command(profile="1g.5gb", start=0)
    await send_command(js, NODE, quick)
    await events.wait_for("command.done", command_id=quick.command_id)

    slow = create_command(profile="1g.5gb", start=1, model=spec(engine_args={"startup_delay": "2"}))
    await send_command(js, NODE, slow)
    await events.wait_for("instance.starting", instance_id=slow.instance_id)
    retire = retire_command(quick.instance_id)
    await send_command(js, NODE, retire)
    await events.wait_for("command.done", command_id=retire.command_id)
    assert not events.of("instance.ready", instance_id=slow.instance_id)
    await events.wait_for("command.done", command_id=slow.command_id)
    assert [s.start for s in (await node_state(nc)).gpus[0].slices] == [1]


async def test_concurrent_creates_on_one_gpu_place_every_slice(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    js = nc.jetstream()
    cmds = [create_command(profile="2g.10gb", start=s) for s in (0, 2, 4)]
    await asyncio.gather(*(send_command(js, NODE, c) for c in cmds))
    for c in cmds:
        await events.wait_for("command.done", command_id=c.command_id)
    slices = (await node_state(nc)).gpus[0].slices
    assert sorted(s.start for s in slices) == [0, 2, 4]
    assert {s.instance_id for s in slices} == {c.instance_id for c in cmds}


@pytest.mark.skipif(not REAL_BRIDGE, reason="migserve_agent.bridge is not written yet")
async def test_ready_instance_serves_jobs_through_its_bridge(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    """The real path: a job on the model's work queue, the bridge the agent started, the engine."""
    js = nc.jetstream()
    cmd = create_command()
    await send_command(js, NODE, cmd)
    await events.wait_for("command.done", command_id=cmd.command_id)
    record = await instance_record(nc, cmd.instance_id)
    assert record is not None and record.bridge_metrics_url.endswith("/metrics")
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        assert (await http.get(record.bridge_metrics_url)).status_code == 200
    router = ReplyRouter(nc)
    await router.start()
    try:
        reply_to, queue = router.open()
        job = InferenceJob(
            job_id="job-1",
            model=MODEL,
            messages=[ChatMessage("user", "hello")],
            params=SamplingParams(max_tokens=5),
            reply_to=reply_to,
            deadline=now() + 30,
            trace_id=cmd.trace_id,
        )
        await js.publish(subjects.infer(MODEL), encode(job))
        replies = [r async for r in iterate_replies(queue, first_timeout=20, idle_timeout=10)]
    finally:
        await router.stop()
    accepted, *tokens, end = replies
    assert isinstance(accepted, JobAccepted) and accepted.instance_id == cmd.instance_id
    assert tokens and all(isinstance(t, TokenChunk) for t in tokens)
    assert isinstance(end, JobEnd) and end.completion_tokens == 5


async def test_an_instance_id_can_be_created_again_after_its_retire(
    nc: NATS, agent: Agent, events: EventLog
) -> None:
    js = nc.jetstream()
    first = create_command()
    await send_command(js, NODE, first)
    await events.wait_for("command.done", command_id=first.command_id)
    old = await instance_record(nc, first.instance_id)
    retire = retire_command(first.instance_id)
    await send_command(js, NODE, retire)
    await events.wait_for("command.done", command_id=retire.command_id)

    second = create_command(instance_id=first.instance_id, profile="2g.10gb", start=4)
    await send_command(js, NODE, second)
    done = await events.wait_for("command.done", command_id=second.command_id)
    assert isinstance(done, CommandDone) and not done.duplicate
    new = await instance_record(nc, first.instance_id)
    assert old is not None and new is not None
    assert (new.profile, new.start, new.state) == ("2g.10gb", 4, "ready")
    assert new.bridge_pid != old.bridge_pid and alive(new.bridge_pid)
    if REAL_BRIDGE:  # the URL the new bridge announced, not the one in the old log lines
        assert new.bridge_metrics_url != old.bridge_metrics_url
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            assert (await http.get(new.bridge_metrics_url)).status_code == 200
