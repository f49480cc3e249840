"""A real agent exports ``migserve_agent_slice_info`` for the slices it makes, and drops them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from migserve_agent.agent import Agent
from migserve_agent.metrics import SLICE_INFO
from migserve_cli.nats_server import NatsServer
from migserve_shared.bus import send_command
from nats.aio.client import Client as NATS
from test_agent_support import (
    MODEL,
    NODE,
    agent_settings,
    create_command,
    event_log,
    instance_record,
    retire_command,
    running_agent,
    state_dir_fixture,
)

state_dir = state_dir_fixture()


def _series(agent: Agent) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in agent.metrics.registry.collect()
        if family.name == SLICE_INFO
        for sample in family.samples
        if sample.value == 1.0
    ]


async def test_slice_info_follows_create_and_retire(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url)
    async with event_log(nc) as events, running_agent(settings, nc) as agent:
        assert _series(agent) == []
        cmd = create_command(profile="1g.5gb", start=6)
        await send_command(nc.jetstream(), NODE, cmd)
        await events.wait_for("command.done", command_id=cmd.command_id)
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None
        await agent.inventory.refresh()
        assert _series(agent) == [
            {
                "node": NODE,
                "gpu": "0",
                "gpu_uuid": record.gpu_uuid,
                "profile": "1g.5gb",
                "start": "6",
                "instance_id": cmd.instance_id,
                "model": MODEL,
            }
        ]
        retire = retire_command(cmd.instance_id)
        await send_command(nc.jetstream(), NODE, retire)
        await events.wait_for("command.done", command_id=retire.command_id)
        await asyncio.sleep(0)
        assert _series(agent) == []
