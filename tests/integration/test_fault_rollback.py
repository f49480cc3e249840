"""Injected faults against a real scaler and agent: plans retry within bounds, roll
back, and say why under their trace id.

Faults: the simulated GPU's failing creates, busy destroys and slow operations
(``SimFaults``), and sim engines that crash at start or never become healthy
(engine_args ``fail_start`` / ``never_healthy``). Each test checks the story
the events tell under the plan's trace id and what is left on the GPU: every
slice belongs to a live instance, nothing is duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from migserve_agent.gpu.simulated import FaultCode, SimFaults
from migserve_cli.nats_server import NatsServer
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CommandFailed,
    JobAccepted,
    JobEnd,
    ScaleFailed,
    SliceCreated,
    SliceDestroyed,
)
from nats.aio.client import Client as NATS
from test_agent_support import state_dir_fixture
from test_fault_support import FAST, Cluster, cluster, model_spec, policy

state_dir = state_dir_fixture()


async def _one_ready_instance(c: Cluster) -> str:
    """Demand until MODEL has one ready instance; its id."""
    trace = await c.demand()
    plan = await c.finished(trace)
    assert plan.status == "done", plan
    [record] = await c.instances()
    assert record.state == "ready" and record.instance_id == plan.steps[0].instance_id
    return record.instance_id


def _uuids(events: Sequence[object]) -> list[str]:
    return sorted(e.slice_uuid for e in events if isinstance(e, SliceCreated | SliceDestroyed))


# Slice creation fails ----------------------------------------------------------------------


async def test_transient_create_failures_are_retried_and_the_plan_completes(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    async with cluster(nc, nats_server.url, state_dir) as c:
        c.backend.inject(SimFaults(fail_create=2, fail_create_code="internal"))
        trace = await c.demand()
        plan = await c.finished(trace)
        assert plan.status == "done", plan
        [step] = plan.steps
        assert step.attempts == 3 == FAST.max_step_attempts
        await c.events.wait_for("instance.ready", trace_id=trace)
        failures = c.events.of("command.failed", trace_id=trace)
        assert len(failures) == 2
        assert all(isinstance(f, CommandFailed) and f.code == "internal" for f in failures)
        assert len(c.events.of("slice.created", trace_id=trace)) == 1
        assert not c.events.of("scale.failed", trace_id=trace)
        [record] = await c.instances()
        assert (record.instance_id, record.state) == (step.instance_id, "ready")
        assert [s.uuid for s in c.slices()] == [record.slice_uuid]


@pytest.mark.parametrize(
    ("code", "attempts"),
    [
        ("internal", FAST.max_step_attempts),  # may pass: tried again, with fresh ids
        ("insufficient_resources", 1),  # the place is taken: planned afresh by later demand
        ("no_permission", 1),  # will not pass
    ],
)
async def test_create_failures_fail_the_plan_within_its_attempts(
    nc: NATS, nats_server: NatsServer, state_dir: Path, code: FaultCode, attempts: int
) -> None:
    async with cluster(nc, nats_server.url, state_dir) as c:
        c.backend.inject(SimFaults(fail_create=attempts, fail_create_code=code))
        trace = await c.demand()
        plan = await c.finished(trace)
        assert plan.status == "failed", plan
        [step] = plan.steps
        assert (step.status, step.attempts) == ("failed", attempts)
        evt = await c.events.wait_for("scale.failed", trace_id=trace)
        assert isinstance(evt, ScaleFailed)
        assert evt.code == ErrorCode(code) and evt.plan_id == plan.plan_id
        assert "injected fault" in evt.reason and "nothing to undo" in evt.reason
        # the agent events an instance's failure, then its command's
        await c.events.wait_until(
            lambda: len(c.events.of("command.failed", trace_id=trace)) >= attempts
        )
        failures = c.events.of("command.failed", trace_id=trace)
        assert len(failures) == attempts
        assert all(isinstance(f, CommandFailed) and f.code == code for f in failures)
        assert len({f.command_id for f in failures if isinstance(f, CommandFailed)}) == attempts
        assert not c.events.of("slice.created", trace_id=trace)
        assert c.slices() == [] and await c.instances() == []
        assert c.backend.faults.fail_create == 0

        # the faults are used up: the next demand, past the back-off, gets its instance
        await asyncio.sleep(FAST.retry_backoff_s + 0.1)
        assert await _one_ready_instance(c)
        assert len(c.slices()) == 1


# Destroying a slice that is in use ----------------------------------------------------------


async def test_destroy_in_use_is_retried_until_the_slice_is_gone(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    async with cluster(nc, nats_server.url, state_dir, in_use_retries=3) as c:
        instance = await _one_ready_instance(c)
        c.backend.inject(SimFaults(destroy_in_use=2))
        trace = await c.remove_model()
        plan = await c.finished(trace)
        assert (plan.action, plan.status) == ("remove", "done")
        [step] = plan.steps
        assert (step.instance_id, step.attempts) == (instance, 1)
        await c.events.wait_for("command.done", trace_id=trace)
        story = c.events.kinds(trace_id=trace)
        for kind in ("scale.decided", "instance.draining", "slice.destroyed", "instance.stopped"):
            assert kind in story, story
        assert "command.failed" not in story
        assert c.backend.faults.destroy_in_use == 0  # both busy answers were seen
        assert c.slices() == [] and await c.instances() == []


async def test_destroy_that_stays_in_use_fails_evented_and_bounded(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    async with cluster(nc, nats_server.url, state_dir, in_use_retries=2) as c:
        instance = await _one_ready_instance(c)
        [made] = c.slices()
        c.backend.inject(SimFaults(destroy_in_use=1000))
        trace = await c.remove_model()
        await c.events.wait_for("command.failed", trace_id=trace)
        plan = await c.finished(trace)
        [step] = plan.steps
        if plan.status == "failed":  # every attempt found the slice busy
            evt = await c.events.wait_for("scale.failed", trace_id=trace)
            assert isinstance(evt, ScaleFailed)
            assert evt.code == ErrorCode.IN_USE and evt.plan_id == plan.plan_id
            assert step.attempts == FAST.max_step_attempts
        else:  # the agent's watch failed the stopped instance between two attempts
            assert plan.status == "done", plan
        failures = c.events.of("command.failed", trace_id=trace)
        assert 1 <= len(failures) <= step.attempts <= FAST.max_step_attempts
        assert all(isinstance(f, CommandFailed) and f.code == ErrorCode.IN_USE for f in failures)
        assert all(isinstance(f, CommandFailed) and f.instance_id == instance for f in failures)
        assert step.instance_id == instance
        # the busy slice is still there (kept by the agent, never reported gone) ...
        assert [s.uuid for s in c.slices()] == [made.uuid]
        assert c.backend.faults.destroy_in_use > 0
        # ... until it is free: then the agent destroys it on its own
        c.backend.inject(SimFaults())
        await c.events.wait_for("slice.destroyed", slice_uuid=made.uuid)
        # the agent's watch found the instance stopped by the failed retire, and failed it
        await c.events.wait_for("instance.failed", instance_id=instance)
        assert c.slices() == [] and await c.instances() == []


# Slow slice operations -------------------------------------------------------------------------


async def test_slow_operations_complete_within_their_timeouts(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    async with cluster(nc, nats_server.url, state_dir) as c:
        c.backend.inject(SimFaults(slow_s=1.0))
        trace = await c.demand()
        plan = await c.finished(trace)
        assert plan.status == "done" and plan.steps[0].attempts == 1
        removal = await c.remove_model()
        plan = await c.finished(removal)
        assert plan.status == "done" and plan.steps[0].attempts == 1
        assert c.slices() == [] and await c.instances() == []
        assert not c.events.of("command.failed") and not c.events.of("scale.failed")


async def test_a_step_slower_than_its_timeout_is_resent_not_duplicated(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    impatient = policy(step_timeout_s=0.5, max_step_attempts=20, resend_after_s=0.2)
    async with cluster(nc, nats_server.url, state_dir, scaler_policy=impatient) as c:
        c.backend.inject(SimFaults(slow_s=1.5))
        trace = await c.demand()
        plan = await c.finished(trace)
        assert plan.status == "done", plan
        [step] = plan.steps
        assert step.attempts >= 3  # sent again (same ids) while the slow create ran
        await c.events.wait_for("command.done", trace_id=trace)
        assert len(c.events.of("slice.created", trace_id=trace)) == 1
        assert len(c.events.of("instance.ready", trace_id=trace)) == 1
        assert len(c.events.of("command.done", trace_id=trace)) == 1
        [record] = await c.instances()
        assert record.instance_id == step.instance_id
        assert [s.uuid for s in c.slices()] == [record.slice_uuid]
        # the stream dropped the resends (same command id): the agent ran it once
        value = c.agent.metrics.value
        create = {"type": "create_instance"}
        assert value("migserve_agent_commands_total", {**create, "outcome": "done"}) == 1
        assert value("migserve_agent_commands_total", {**create, "outcome": "duplicate"}) == 0


# Engines that crash at start or never become healthy --------------------------------------------


async def _scale_up_fails(c: Cluster, **fault: str) -> tuple[str, str]:
    """One ready instance, then the engine fault for new instances, then a violation:
    (the old instance, the violation's trace id)."""
    old = await _one_ready_instance(c)
    await c.register(model_spec(**fault))
    return old, await c.violation()


async def _old_instance_serves_alone(c: Cluster, old: str, trace: str) -> None:
    made = c.events.of("slice.created", trace_id=trace)
    assert made, "the plan never made its new slice"
    await c.settle(lambda: len(c.events.of("slice.destroyed", trace_id=trace)) == len(made))
    assert _uuids(made) == _uuids(c.events.of("slice.destroyed", trace_id=trace))
    assert not c.events.of("instance.draining", instance_id=old)
    [record] = await c.instances()
    assert (record.instance_id, record.state) == (old, "ready")
    assert [s.uuid for s in c.slices()] == [record.slice_uuid]
    accepted, *_, end = await c.ask()
    assert isinstance(accepted, JobAccepted) and accepted.instance_id == old
    assert isinstance(end, JobEnd) and end.completion_tokens == 3


async def test_engine_crashing_at_start_fails_the_scale_up_and_keeps_the_old_instance(
    nc: NATS, nats_server: NatsServer, state_dir: Path
) -> None:
    async with cluster(nc, nats_server.url, state_dir) as c:
        old, trace = await _scale_up_fails(c, fail_start="true")
        plan = await c.finished(trace)
        assert (plan.action, plan.status) == ("scale_up", "failed"), plan
        create, retire = plan.steps
        assert (create.op, create.replaces, create.attempts) == ("create", old, 3)
        assert (retire.op, retire.instance_id, retire.attempts) == ("retire", old, 0)
        evt = await c.events.wait_for("scale.failed", trace_id=trace)
        assert isinstance(evt, ScaleFailed)
        assert evt.code == ErrorCode.ENGINE_FAILED and evt.plan_id == plan.plan_id
        assert "exited while starting" in evt.reason
        assert len(c.events.of("instance.failed", trace_id=trace)) == 3
        await _old_instance_serves_alone(c, old, trace)


@pytest.mark.parametrize("who_gives_up", ["agent", "scaler"])
async def test_engine_never_healthy_rolls_the_scale_up_back(
    nc: NATS, nats_server: NatsServer, state_dir: Path, who_gives_up: str
) -> None:
    if who_gives_up == "agent":  # its ready timeout ends first: it fails the create
        scaler_policy, ready_timeout_s, status = policy(max_step_attempts=2), 1.5, "failed"
    else:  # the step times out first: the scaler retires the instance it may have made
        scaler_policy = policy(max_step_attempts=2, step_timeout_s=1.5)
        ready_timeout_s, status = 3.2, "rolled_back"
    async with cluster(
        nc, nats_server.url, state_dir, scaler_policy=scaler_policy,
        ready_timeout_s=ready_timeout_s,
    ) as c:  # fmt: skip
        old, trace = await _scale_up_fails(c, never_healthy="true")
        plan = await c.finished(trace, within=20)
        assert (plan.action, plan.status) == ("scale_up", status), plan
        evt = await c.events.wait_for("scale.failed", trace_id=trace)
        assert isinstance(evt, ScaleFailed)
        assert evt.code == ErrorCode.TIMEOUT and evt.plan_id == plan.plan_id
        if who_gives_up == "scaler":
            undo = plan.steps[-1]
            assert (undo.op, undo.rollback, undo.status) == ("retire", True, "done")
            assert undo.instance_id == plan.steps[0].instance_id
            assert "rolling back: retire" in evt.reason
        await _old_instance_serves_alone(c, old, trace)
