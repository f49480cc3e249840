"""Helpers for the fault-injection tests (no tests here).

A real scaler and a real agent run in the test's event loop against a real
nats-server: the agent with the simulated GPU backend (its faults injected
with ``SimulatedGpuBackend.inject``) and the process runtime (real sim
engines, real bridges). Policies are short so every test ends in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migserve_agent.agent import Agent
from migserve_agent.gpu.base import SliceInfo
from migserve_agent.gpu.simulated import SimulatedGpuBackend
from migserve_scaler.app import Scaler
from migserve_scaler.core.policy import Policy
from migserve_scaler.metrics import ScalerMetrics
from migserve_scaler.settings import ScalerSettings
from migserve_shared import subjects
from migserve_shared.bus import (
    Buckets,
    EventPublisher,
    ReplyRouter,
    iterate_replies,
    open_buckets,
)
from migserve_shared.env import NatsSettings
from migserve_shared.ids import new_id, new_trace_id
from migserve_shared.messages import (
    ChatMessage,
    Demand,
    Event,
    InferenceJob,
    InstanceRecord,
    JobReply,
    ModelRegistered,
    ModelRemoved,
    ModelSpec,
    Plan,
    SamplingParams,
    SloEvidence,
    SloViolation,
    decode_instance,
    decode_plan,
    encode,
    now,
)
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NoKeysError
from test_agent_support import EventLog, agent_settings, event_log, running_agent

MODEL = "org/fault-model:1"

#: the scaler's policy in these tests: short waits, three attempts per step
FAST = Policy(
    plan_timeout_s=30.0,
    retry_backoff_s=0.2,
    failure_report_interval_s=0.0,
    resend_after_s=5.0,
    cooldown_s=0.0,
    step_timeout_s=10.0,
    max_step_attempts=3,
    default_swap_cost_s=1.0,
    drain_timeout_s=2.0,
    replace_backoff_s=60.0,  # no replacement plans of their own in the middle of a test
)


def model_spec(**engine_args: str) -> ModelSpec:
    return ModelSpec(
        model_id=MODEL,
        engine="sim",
        memory_mb=1000,
        tpot_slo_ms=50.0,
        engine_args={"alpha_ms": "1", "beta_ms": "0", **engine_args},
    )


@contextlib.asynccontextmanager
async def running_scaler(nc: NATS, url: str, policy: Policy) -> AsyncIterator[Scaler]:
    settings = ScalerSettings(
        scaler_id="scaler-faults",
        nats=NatsSettings(url=url),
        plan_timeout_s=policy.plan_timeout_s,
        tick_interval_s=0.1,
        policy=policy,
    )
    scaler = Scaler(settings=settings, nc=nc, metrics=ScalerMetrics())
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(scaler.run(stop, ready=ready), name="fault-scaler")
    try:
        await asyncio.wait_for(asyncio.shield(ready.wait()), 10)
        yield scaler
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass
class Cluster:
    """One node's agent and the scaler, the event log, the buckets."""

    nc: NATS
    agent: Agent
    events: EventLog
    buckets: Buckets

    @property
    def backend(self) -> SimulatedGpuBackend:
        assert isinstance(self.agent.backend, SimulatedGpuBackend)
        return self.agent.backend

    async def publish(self, event: Event) -> None:
        await EventPublisher(self.nc.jetstream(), source="test").publish(event)

    async def demand(self) -> str:
        """Demand for MODEL under a fresh trace id; the trace id."""
        trace = new_trace_id()
        await self.publish(Demand(model_id=MODEL, trace_id=trace))
        return trace

    async def violation(self) -> str:
        """An SLO violation of MODEL (load expected to last 30 s); the trace id."""
        trace = new_trace_id()
        evidence = SloEvidence(tpot_ms=120.0, slo_ms=50.0, window_s=10.0, windows=3)
        await self.publish(SloViolation(model_id=MODEL, evidence=evidence, trace_id=trace))
        return trace

    async def register(self, spec: ModelSpec) -> None:
        await self.buckets.models.put(subjects.model_key(spec.model_id), encode(spec))
        await self.publish(ModelRegistered(model=spec, trace_id=new_trace_id()))

    async def remove_model(self) -> str:
        trace = new_trace_id()
        await self.buckets.models.delete(subjects.model_key(MODEL))
        await self.publish(ModelRemoved(model_id=MODEL, trace_id=trace))
        return trace

    async def plan(self) -> Plan | None:
        try:
            entry = await self.buckets.plans.get(subjects.model_key(MODEL))
        except KeyNotFoundError:
            return None
        return decode_plan(entry.value) if entry.value else None

    async def plan_of(self, trace: str, done: Callable[[Plan], bool], within: float) -> Plan:
        """MODEL's plan of ``trace`` once ``done`` holds for it."""
        deadline = asyncio.get_running_loop().time() + within
        plan = None
        while asyncio.get_running_loop().time() < deadline:
            plan = await self.plan()
            if plan is not None and plan.trace_id == trace and done(plan):
                return plan
            await asyncio.sleep(0.05)
        raise AssertionError(f"plan of trace {trace} not as expected in {within}s: {plan}")

    async def finished(self, trace: str, *, within: float = 15.0) -> Plan:
        return await self.plan_of(trace, lambda p: p.status not in ("pending", "running"), within)

    async def instances(self) -> list[InstanceRecord]:
        try:
            keys = await self.buckets.instances.keys()
        except NoKeysError:
            return []
        out = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await self.buckets.instances.get(key)
                if entry.value:
                    out.append(decode_instance(entry.value))
        return out

    def slices(self) -> list[SliceInfo]:
        """The slices the simulated GPU holds (the truth, not a report of it)."""
        return self.backend.list_slices(0)

    async def settle(self, check: Callable[[], bool], *, within: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not settled within {within}s")
            await asyncio.sleep(0.05)

    async def ask(self, *, within: float = 15.0) -> list[JobReply]:
        """One job through MODEL's work queue: the replies of whichever bridge takes it."""
        router = ReplyRouter(self.nc)
        await router.start()
        try:
            reply_to, queue = router.open()
            job = InferenceJob(
                job_id=new_id("job-"),
                model=MODEL,
                messages=[ChatMessage("user", "still there?")],
                params=SamplingParams(max_tokens=3),
                reply_to=reply_to,
                deadline=now() + within,
                trace_id=new_trace_id(),
            )
            await self.nc.jetstream().publish(subjects.infer(MODEL), encode(job))
            return [r async for r in iterate_replies(queue, first_timeout=within, idle_timeout=5)]
        finally:
            await router.stop()


@contextlib.asynccontextmanager
async def cluster(
    nc: NATS,
    url: str,
    state_dir: Path,
    *,
    scaler_policy: Policy = FAST,
    in_use_retries: int = 3,
    **agent: Any,
) -> AsyncIterator[Cluster]:
    """MODEL registered, the agent up (its node in KV), then the scaler."""
    buckets = await open_buckets(nc.jetstream())
    await buckets.models.put(subjects.model_key(MODEL), encode(model_spec()))
    settings = agent_settings(state_dir, url, **agent)
    async with (
        event_log(nc) as events,
        running_agent(settings, nc, in_use_retries=in_use_retries) as running,
        running_scaler(nc, url, scaler_policy),
    ):
        yield Cluster(nc=nc, agent=running, events=events, buckets=buckets)


def policy(**changes: Any) -> Policy:
    """FAST with ``changes``."""
    return dataclasses.replace(FAST, **changes)
