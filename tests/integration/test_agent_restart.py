"""Agent restarts: running engines are adopted, dead ones and orphan slices cleaned up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from migserve_agent.gpu.base import OwnedSlice, SliceInfo
from migserve_agent.gpu.ownership import SliceOwnership
from migserve_agent.gpu.simulated import SimulatedGpuBackend
from migserve_agent.settings import AgentSettings
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.bus import open_buckets, send_command
from migserve_shared.messages import (
    CommandDone,
    InstanceFailed,
    InstanceRecord,
    NodeInventory,
    encode,
)
from nats.aio.client import Client as NATS
from test_agent_support import (
    BRIDGE_COMMAND,
    MODEL,
    NODE,
    agent_settings,
    alive,
    create_command,
    event_log,
    instance_record,
    node_state,
    retire_command,
    running_agent,
    spec,
    state_dir_fixture,
)

state_dir = state_dir_fixture()


async def _healthy(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        try:
            return (await http.get(url + "/health")).status_code == 200
        except httpx.HTTPError:
            return False


async def test_restart_adopts_running_instance(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url)
    cmd = create_command()
    async with event_log(nc) as events:
        async with running_agent(settings, nc):
            await send_command(nc.jetstream(), NODE, cmd)
            await events.wait_for("command.done", command_id=cmd.command_id)
        before = await instance_record(nc, cmd.instance_id)
        assert before is not None and before.state == "ready"
        assert alive(before.engine_pid) and alive(before.bridge_pid)  # outlived the agent

        async with running_agent(settings, nc) as agent:
            assert [r.instance_id for r in agent.instances.records()] == [cmd.instance_id]
            assert await _healthy(before.engine_url)
            after = await instance_record(nc, cmd.instance_id)
            assert after == before
            [slice_] = (await node_state(nc)).gpus[0].slices
            assert slice_.instance_id == cmd.instance_id and slice_.ours
            await asyncio.sleep(0.3)  # a few watch rounds: nothing fails
            assert not events.of("instance.failed") and not events.of("slice.destroyed")

            retire = retire_command(cmd.instance_id)
            await send_command(nc.jetstream(), NODE, retire)
            await events.wait_for("command.done", command_id=retire.command_id)
        assert not alive(before.engine_pid) and not alive(before.bridge_pid)
        assert await instance_record(nc, cmd.instance_id) is None


async def test_restart_cleans_up_an_instance_whose_engine_died(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url)
    cmd = create_command()
    async with event_log(nc) as events:
        async with running_agent(settings, nc):
            await send_command(nc.jetstream(), NODE, cmd)
            await events.wait_for("command.done", command_id=cmd.command_id)
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None and record.engine_pid is not None
        os.kill(record.engine_pid, signal.SIGKILL)
        while alive(record.engine_pid):
            await asyncio.sleep(0.02)

        async with running_agent(settings, nc) as agent:
            failed = await events.wait_for("instance.failed", instance_id=cmd.instance_id)
            assert isinstance(failed, InstanceFailed)
            assert "not running" in failed.reason and failed.trace_id == cmd.trace_id
            destroyed = await events.wait_for("slice.destroyed", instance_id=cmd.instance_id)
            assert destroyed.trace_id == cmd.trace_id
            assert agent.instances.records() == []
            assert await instance_record(nc, cmd.instance_id) is None
            assert (await node_state(nc)).gpus[0].slices == []
            assert not alive(record.bridge_pid)  # the survivor was stopped
            assert (
                agent.metrics.value(
                    "migserve_agent_reconcile_corrections_total", {"kind": "fail_instance"}
                )
                == 1
            )


def _gpu_with_orphan_and_foreign_slice(
    settings: AgentSettings,
) -> tuple[SimulatedGpuBackend, SliceInfo]:
    state_dir = settings.state_dir
    backend = SimulatedGpuBackend(
        settings.sim_gpus,
        state_file=state_dir / "simulated-gpus.json",
        seed=f"{settings.node}@{state_dir.resolve()}",
    )
    ours = backend.create_slice(0, "3g.20gb", 4)
    theirs = backend.create_slice(0, "1g.5gb", 0)
    gpu = backend.list_gpus()[0]
    SliceOwnership(state_dir / "owned-slices.json").record(
        OwnedSlice(
            uuid=ours.uuid,
            gpu_index=0,
            gpu_uuid=gpu.uuid,
            gi_id=ours.gi_id,
            profile=ours.profile,
            start=ours.start,
            instance_id="inst-vanished",
        )
    )
    return backend, theirs


async def test_restart_destroys_our_orphan_slices_and_keeps_others(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url)
    # before the agent starts: a slice we made for an instance that has no record,
    # and a slice someone else made (not in our ownership file)
    backend, theirs = _gpu_with_orphan_and_foreign_slice(settings)
    async with event_log(nc) as events, running_agent(settings, nc, backend=backend):
        destroyed = await events.wait_for("slice.destroyed", instance_id="inst-vanished")
        assert "no instance uses it" in getattr(destroyed, "reason", "")
        [left] = (await node_state(nc)).gpus[0].slices
        assert (left.uuid, left.ours, left.instance_id) == (theirs.uuid, False, None)
        await asyncio.sleep(0.3)  # the watcher leaves slices that are not ours alone
        assert [s.uuid for s in backend.list_slices(0)] == [theirs.uuid]


async def test_restart_fails_leftover_records_and_stops_unrecorded_processes(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url)
    buckets = await open_buckets(nc.jetstream())
    stale = InstanceRecord(
        instance_id="inst-stale",
        model_id=MODEL,
        node=NODE,
        gpu_index=0,
        profile="1g.5gb",
        start=0,
        slice_uuid="MIG-gone",
        state="ready",
        trace_id="trace-stale",
    )
    other_node = InstanceRecord(
        instance_id="inst-elsewhere", model_id=MODEL, node="node-other", gpu_index=0,
        profile="1g.5gb", start=0, state="ready",
    )  # fmt: skip
    await buckets.instances.put(subjects.instance_key(stale.instance_id), encode(stale))
    await buckets.instances.put(subjects.instance_key(other_node.instance_id), encode(other_node))
    await buckets.instances.put("garbage", b"{not a record")
    async with event_log(nc) as events, running_agent(settings, nc) as agent:
        failed = await events.wait_for("instance.failed", instance_id="inst-stale")
        assert isinstance(failed, InstanceFailed) and "no longer exists" in failed.reason
        assert failed.trace_id == "trace-stale"
        assert await instance_record(nc, "inst-stale") is None
        assert await instance_record(nc, "inst-elsewhere") == other_node  # not ours to touch
        assert agent.metrics.value("migserve_agent_bad_records_total") == 1


async def test_command_interrupted_by_shutdown_is_redone_after_restart(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    settings = agent_settings(state_dir, nats_server.url, shutdown_timeout_s=0.3)
    cmd = create_command(model=spec(engine_args={"startup_delay": "1.5"}))
    async with event_log(nc) as events:
        async with running_agent(settings, nc):
            await send_command(nc.jetstream(), NODE, cmd)
            await events.wait_for("instance.starting", instance_id=cmd.instance_id)
        # stopped mid-start: the engine was abandoned, the slice and record remain
        record = await instance_record(nc, cmd.instance_id)
        assert record is not None and record.state == "starting"

        async with running_agent(settings, nc):
            failed = await events.wait_for("instance.failed", instance_id=cmd.instance_id)
            assert "restarted while the instance was starting" in getattr(failed, "reason", "")
            done = await events.wait_for("command.done", command_id=cmd.command_id)
            assert isinstance(done, CommandDone) and not done.duplicate
            ready = await instance_record(nc, cmd.instance_id)
            assert ready is not None and ready.state == "ready"
            assert len((await node_state(nc)).gpus[0].slices) == 1
            retire = retire_command(cmd.instance_id)
            await send_command(nc.jetstream(), NODE, retire)
            await events.wait_for("command.done", command_id=retire.command_id)


def test_help_lists_the_environment() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "migserve_agent", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for variable in ("MIGSERVE_NODE", "MIGSERVE_STATE_DIR", "MIGSERVE_SIM_GPUS"):
        assert variable in out


def test_bad_environment_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "MIGSERVE_NODE": "n1", "MIGSERVE_STATE_DIR": str(tmp_path),
           "MIGSERVE_SIM_GPUS": "A100-SXM4-40GB,RTX-4090"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "migserve_agent"],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "MIGSERVE_SIM_GPUS" in proc.stderr and "RTX-4090" in proc.stderr


def _start_agent_process(env: dict[str, str], state_dir: Path) -> subprocess.Popen[bytes]:
    state_dir.mkdir(parents=True)
    with open(state_dir.parent / "agent.log", "wb") as agent_log:
        return subprocess.Popen(
            [sys.executable, "-m", "migserve_agent"], env=env, stdout=agent_log, stderr=agent_log
        )


async def test_sigterm_stops_the_agent_but_not_its_engines(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    env = {
        **os.environ,
        "MIGSERVE_NODE": NODE,
        "MIGSERVE_STATE_DIR": str(state_dir),
        "MIGSERVE_NATS_URL": nats_server.url,
        "MIGSERVE_SIM_GPUS": "H100-80GB, NVIDIA H200",
        "MIGSERVE_SIM_CREATE_LATENCY_S": "0",
        "MIGSERVE_SIM_DESTROY_LATENCY_S": "0",
        "MIGSERVE_SIM_ENGINE_STARTUP_S": "0.1",
        "MIGSERVE_BRIDGE_COMMAND": " ".join(f"'{part}'" for part in BRIDGE_COMMAND),
        "MIGSERVE_LOG_FORMAT": "text",
    }
    proc = _start_agent_process(env, state_dir)
    try:
        async with event_log(nc) as events:
            inventory = await events.wait_for("node.inventory")
            assert isinstance(inventory, NodeInventory)
            assert [g.model for g in inventory.node.gpus] == ["H100-80GB", "H200-141GB"]
            cmd = create_command(profile="1g.18gb", gpu_index=1)
            await send_command(nc.jetstream(), NODE, cmd)
            await events.wait_for("command.done", command_id=cmd.command_id, within=60)
            record = await instance_record(nc, cmd.instance_id)
            assert record is not None and record.gpu_index == 1
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            assert alive(record.engine_pid) and alive(record.bridge_pid)
            assert await _healthy(record.engine_url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
