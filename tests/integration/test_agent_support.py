"""Helpers for the agent's integration tests (no tests here).

The agent runs in the test's event loop against a real nats-server; its
engines are real sim-engine processes and its bridges real bridge processes
(or, if ``migserve_agent/bridge`` is missing, a placeholder that announces
itself and sleeps). Every process an agent started is killed after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import migserve_agent
import msgspec
import pytest
from migserve_agent.agent import Agent
from migserve_agent.gpu.simulated import SimGpuConfig, SimGpuSpec
from migserve_agent.runtime import procs
from migserve_agent.runtime.process import DEFAULT_BRIDGE_COMMAND
from migserve_agent.settings import AgentSettings
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.ids import new_id, new_trace_id
from migserve_shared.messages import (
    CreateInstance,
    Event,
    InstanceRecord,
    ModelSpec,
    NodeState,
    RetireInstance,
    decode_event,
    decode_instance,
    decode_node_state,
    event_kind,
    now,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

NODE = "node-test"
MODEL = "org/agent-model:1"

_BRIDGE_MAIN = Path(migserve_agent.__file__).parent / "bridge" / "__main__.py"
#: stands in for the bridge while it is not written: announces itself, then sleeps
PLACEHOLDER_BRIDGE = (
    sys.executable,
    "-c",
    "import json, time; print(json.dumps({'event': 'listening', 'metrics_port': 0}), "
    "flush=True); time.sleep(3600)",
)
BRIDGE_COMMAND = DEFAULT_BRIDGE_COMMAND if _BRIDGE_MAIN.exists() else PLACEHOLDER_BRIDGE
REAL_BRIDGE = BRIDGE_COMMAND == DEFAULT_BRIDGE_COMMAND


def agent_settings(state_dir: Path, nats_url: str, **overrides: Any) -> AgentSettings:
    """Settings for a fast test agent: no slice latency, a short engine start."""
    values: dict[str, Any] = {
        "node": NODE,
        "state_dir": state_dir,
        "nats": NatsSettings(url=nats_url, name="test-agent"),
        "sim_gpus": (SimGpuSpec("A100-SXM4-40GB"),),
        "sim_gpu": SimGpuConfig(),
        "sim_engine_startup_s": 0.1,
        "ready_timeout_s": 30.0,
        "bridge_command": BRIDGE_COMMAND,
        "watch_interval_s": 0.1,
        "inventory_interval_s": 5.0,
        "shutdown_timeout_s": 20.0,
        "command_fetch_timeout_s": 0.2,
    }
    values.update(overrides)
    return AgentSettings(**values)


@contextlib.asynccontextmanager
async def running_agent(settings: AgentSettings, nc: NATS, **kwargs: Any) -> AsyncIterator[Agent]:
    """An agent running in this event loop until the block ends (engines keep running)."""
    agent = Agent(settings, nc=nc, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="test-agent")
    started = asyncio.create_task(agent.started.wait(), name="test-agent-started")
    try:
        await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        assert agent.started.is_set(), "the agent did not start in time"
        yield agent
    finally:
        started.cancel()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await started
        await asyncio.wait_for(task, 30)
        agent.close()


class EventLog:
    """Every event on the EVENTS stream, decoded, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._sub: Any = None

    async def start(self, nc: NATS) -> EventLog:
        self._sub = await nc.jetstream().subscribe(
            subjects.EVENTS_WILDCARD, ordered_consumer=True, cb=self._on
        )
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        self.events.append(decode_event(msg.data))
        self._changed.set()

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if event_kind(e) == kind and all(getattr(e, k, None) == v for k, v in match.items())
        ]

    def kinds(self, **match: Any) -> list[str]:
        return [
            event_kind(e)
            for e in self.events
            if all(getattr(e, k, None) == v for k, v in match.items())
        ]

    async def wait_for(self, kind: str, *, within: float = 30.0, **match: Any) -> Event:
        """The first event of ``kind`` whose fields equal ``match``."""

        async def first() -> Event:
            while True:
                found = self.of(kind, **match)
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(first(), within)
        except TimeoutError:
            seen = [(event_kind(e), getattr(e, "instance_id", "")) for e in self.events]
            raise AssertionError(
                f"no {kind} event matching {match} in {within}s; saw {seen}"
            ) from None

    async def wait_until(self, check: Callable[[], bool], *, within: float = 30.0) -> None:
        async def loop() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), within)


@contextlib.asynccontextmanager
async def event_log(nc: NATS) -> AsyncIterator[EventLog]:
    log = await EventLog().start(nc)
    try:
        yield log
    finally:
        await log.stop()


def spec(**overrides: Any) -> ModelSpec:
    values: dict[str, Any] = {
        "model_id": MODEL,
        "engine": "sim",
        "memory_mb": 1000,
        "tpot_slo_ms": 50.0,
        "engine_args": {"alpha_ms": "1", "beta_ms": "0"},
    }
    values.update(overrides)
    return ModelSpec(**values)


def create_command(
    *,
    instance_id: str | None = None,
    profile: str = "1g.5gb",
    start: int = 0,
    gpu_index: int = 0,
    model: ModelSpec | None = None,
    trace_id: str | None = None,
) -> CreateInstance:
    return CreateInstance(
        command_id=new_id("cmd-"),
        trace_id=trace_id or new_trace_id(),
        instance_id=instance_id or new_id("inst-"),
        model=model or spec(),
        gpu_index=gpu_index,
        profile=profile,
        start=start,
        issued_at=now(),
    )


def retire_command(instance_id: str, *, trace_id: str | None = None) -> RetireInstance:
    return RetireInstance(
        command_id=new_id("cmd-"),
        trace_id=trace_id or new_trace_id(),
        instance_id=instance_id,
        drain_timeout_s=10.0,
        issued_at=now(),
    )


async def instance_record(nc: NATS, instance_id: str) -> InstanceRecord | None:
    buckets = await open_buckets(nc.jetstream())
    try:
        entry = await buckets.instances.get(subjects.instance_key(instance_id))
    except KeyNotFoundError:
        return None
    return decode_instance(entry.value) if entry.value else None


async def node_state(nc: NATS, node: str = NODE) -> NodeState:
    buckets = await open_buckets(nc.jetstream())
    entry = await buckets.nodes.get(subjects.node_key(node))
    assert entry.value
    return decode_node_state(entry.value)


def alive(pid: int | None) -> bool:
    """Whether a PID runs (and is not a zombie), reaping it if it is our exited child."""
    if pid is None:
        return False
    ticks = procs.start_ticks(pid)
    return ticks is not None and procs.is_running(procs.ProcessHandle(pid=pid, start_ticks=ticks))


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL every process an agent recorded under ``state_dir``; their PIDs."""
    killed = []
    for path in (state_dir / "runtime").glob("*.json"):
        record = msgspec.json.decode(path.read_bytes())
        for role in ("engine", "bridge"):
            handle = record.get(role)
            if not handle:
                continue
            proc = procs.ProcessHandle(pid=handle["pid"], start_ticks=handle["start_ticks"])
            if procs.is_running(proc):
                procs.kill_now(proc)
                killed.append(proc.pid)
    return killed


def state_dir_fixture() -> Any:
    """A ``state_dir`` fixture: the agent's state directory under ``tmp_path``; every
    process an agent recorded there is killed after the test.

    Use as ``state_dir = state_dir_fixture()`` at module level."""

    @pytest.fixture
    def state_dir(tmp_path: Path) -> Iterator[Path]:
        path = tmp_path / "agent"
        try:
            yield path
        finally:
            kill_leftovers(path)

    return state_dir


def events_fixture() -> Any:
    """An ``events`` fixture: an :class:`EventLog` of the test's NATS connection ``nc``.

    Use as ``events = events_fixture()`` at module level."""

    @pytest.fixture
    async def events(nc: NATS) -> AsyncIterator[EventLog]:
        async with event_log(nc) as log:
            yield log

    return events
