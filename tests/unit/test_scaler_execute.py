"""Plans step by step: order, results, timeouts, retries, rollback, resuming after a restart."""

from __future__ import annotations

import msgspec
import pytest
from migserve_scaler.core import Memory, Outcome, Policy, PutPlan
from migserve_scaler.core.cluster import reserved_slices
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    CreateInstance,
    InstanceFailed,
    InstanceReady,
    InstanceStopped,
    Plan,
    PlanStep,
    RetireInstance,
    ScaleFailed,
)
from test_scaler_support import (
    MODEL,
    NOW,
    OTHER,
    POLICY,
    cluster,
    commands,
    decide,
    events,
    inst,
    spec,
    the_plan,
    tick,
    violation,
    with_plan,
)
from test_scaler_support import of_type as effects_of

OLD = inst("old", profile="1g.5gb", start=0)


def scale_up() -> tuple[Plan, Outcome]:
    """The make-before-break plan a violation starts for OLD, its create step sent."""
    out = decide(cluster([OLD]), violation())
    return the_plan(out), out


def running(plan: Plan, *instances: object, revision: int = 7) -> object:
    return with_plan(cluster([OLD, *instances], models=[spec(), spec(OTHER)]), plan, revision)


def done_event(plan: Plan, index: int) -> CommandDone:
    step = plan.steps[index]
    return CommandDone(command_id=step.command_id, node=step.node, instance_id=step.instance_id)


# The forward path ------------------------------------------------------------------
def test_make_before_break_runs_create_then_retire_then_is_done() -> None:
    plan, out = scale_up()
    new, _old = plan.steps
    assert [type(c) for c in commands(out)] == [CreateInstance]
    assert (new.attempts, new.sent_at, new.first_sent_at) == (1, NOW, NOW)

    ready = decide(running(plan), done_event(plan, 0), now=NOW + 4, memory=out.memory)
    after = the_plan(ready)
    assert [s.status for s in after.steps] == ["done", "sent"] and after.status == "running"
    [retire] = commands(ready)
    assert isinstance(retire, RetireInstance) and retire.instance_id == "old"
    assert retire.trace_id == plan.trace_id and retire.drain_timeout_s == POLICY.drain_timeout_s
    # the swap's cost is learned: from the first send to ready
    assert ready.memory.swap_cost == {("sim", new.profile): 4.0}

    finished = decide(running(after), done_event(after, 1), now=NOW + 6, memory=ready.memory)
    final = the_plan(finished)
    assert final.status == "done" and final.updated == NOW + 6
    assert commands(finished) == [] and events(finished) == []


@pytest.mark.parametrize("how", ["instance.ready", "record ready"])
def test_create_step_done_by_ready_event_or_record(how: str) -> None:
    plan, out = scale_up()
    new = plan.steps[0]
    if how == "instance.ready":
        result = decide(
            running(plan),
            InstanceReady(instance_id=new.instance_id, model_id=MODEL, node=new.node),
            now=NOW + 2,
            memory=out.memory,
        )
    else:
        rec = inst(new.instance_id, profile=new.profile, start=new.start)
        result = tick(running(plan, rec), NOW + 2, out.memory)
    assert [s.status for s in the_plan(result).steps] == ["done", "sent"]


@pytest.mark.parametrize("how", ["instance.stopped", "instance.failed", "record gone"])
def test_retire_step_done_by_stop_failure_or_record_gone(how: str) -> None:
    plan, _ = scale_up()
    plan = the_plan(decide(running(plan), done_event(plan, 0), now=NOW + 1))
    if how == "record gone":
        view = with_plan(cluster([]), plan)
        result = tick(view, NOW + 2, Memory(sent={plan.steps[1].command_id: NOW + 1}))
    else:
        kind = InstanceStopped if how == "instance.stopped" else InstanceFailed
        result = decide(running(plan), kind(instance_id="old", model_id=MODEL, node="n1"))
    assert the_plan(result).status == "done"


def test_results_of_steps_not_in_flight_are_ignored() -> None:
    plan, _ = scale_up()
    # the retire step is pending: its instance stopping is not its result
    early = decide(running(plan), InstanceStopped(instance_id="old", model_id=MODEL, node="n1"))
    assert early.effects == ()
    unknown = decide(running(plan), CommandDone(command_id="nope", node="n1"))
    assert unknown.effects == ()


# Timeouts and retries ----------------------------------------------------------------
def test_step_timeout_resends_then_fails_and_rolls_back() -> None:
    plan, out = scale_up()
    new = plan.steps[0]
    quiet = tick(running(plan), NOW + 50, out.memory)
    assert not the_plan_written(quiet)  # only a soft resend of the same command

    again = tick(running(plan), NOW + 101, out.memory)
    second = the_plan(again)
    assert second.steps[0].attempts == 2 and second.steps[0].sent_at == NOW + 101
    [cmd] = commands(again)
    assert cmd.command_id == new.command_id  # the same command: the agent answers a duplicate

    late = tick(running(second), NOW + 202, again.memory)
    failed = the_plan(late)
    assert failed.status == "running" and failed.steps[0].status == "failed"
    assert failed.steps[1].status == "failed" and failed.steps[1].reason == "skipped"
    [undo] = failed.steps[2:]
    assert undo.rollback and (undo.op, undo.instance_id) == ("retire", new.instance_id)
    [evt] = events(late)
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.TIMEOUT
    assert evt.trace_id == plan.trace_id and "rolling back" in evt.reason
    [retire] = commands(late)
    assert isinstance(retire, RetireInstance) and retire.instance_id == new.instance_id

    back = decide(running(failed), done_event(failed, 2), now=NOW + 210, memory=late.memory)
    assert the_plan(back).status == "rolled_back"
    assert commands(back) == []  # the old instance is kept: nothing retires it


def the_plan_written(out: Outcome) -> bool:
    return bool(effects_of(out, PutPlan))


def test_failed_attempt_is_retried_with_fresh_ids_then_the_old_instance_is_kept() -> None:
    plan, out = scale_up()
    new = plan.steps[0]
    broke = CommandFailed(
        command_id=new.command_id, node=new.node, code=ErrorCode.ENGINE_FAILED, reason="boom"
    )
    retry = decide(running(plan), broke, now=NOW + 3, memory=out.memory)
    second = the_plan(retry)
    step = second.steps[0]
    assert step.status == "sent" and step.attempts == 2
    assert step.command_id == f"{new.command_id}-r2" and step.instance_id == f"{new.instance_id}-r2"
    [cmd] = commands(retry)
    assert isinstance(cmd, CreateInstance) and cmd.instance_id == step.instance_id
    assert events(retry) == []

    again = msgspec.structs.replace(broke, command_id=step.command_id)
    out2 = decide(running(second), again, now=NOW + 6, memory=retry.memory)
    final = the_plan(out2)
    # the agent cleaned up the failed instance; the old one still serves: nothing to undo
    assert final.status == "failed" and commands(out2) == []
    [evt] = events(out2)
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.ENGINE_FAILED
    assert "boom" in evt.reason and "nothing to undo" in evt.reason


def test_failure_that_a_retry_cannot_fix_fails_at_once() -> None:
    plan, out = scale_up()
    new = plan.steps[0]
    full = CommandFailed(
        command_id=new.command_id, node=new.node, code=ErrorCode.INSUFFICIENT_RESOURCES
    )
    final = the_plan(decide(running(plan), full, memory=out.memory))
    assert final.status == "failed" and final.steps[0].attempts == 1


def test_failed_retire_of_the_old_instance_keeps_the_new_one() -> None:
    plan, _ = scale_up()
    plan = the_plan(decide(running(plan), done_event(plan, 0), now=NOW + 1))
    old = plan.steps[1]
    stuck = CommandFailed(command_id=old.command_id, node="n1", code=ErrorCode.NOT_FOUND)
    out = decide(running(plan), stuck, now=NOW + 2)
    final = the_plan(out)
    assert final.status == "failed" and len(final.steps) == 2  # no undo: the new one serves
    assert commands(out) == []


def test_plan_timeout_before_the_switch_retires_the_new_instance() -> None:
    """A restart left the new instance done and the old one's retirement unsent."""
    plan, _ = scale_up()
    new, old = plan.steps
    half = msgspec.structs.replace(plan, steps=[msgspec.structs.replace(new, status="done"), old])
    policy = Policy(plan_timeout_s=10)
    out = tick(running(half), NOW + 11, policy=policy)
    final = the_plan(out)
    [undo] = [s for s in final.steps if s.rollback]
    assert (undo.op, undo.instance_id, undo.status) == ("retire", new.instance_id, "sent")
    assert final.steps[1].status == "failed"  # the old instance is never retired


# Break before make -------------------------------------------------------------------
def bbm() -> tuple[Plan, object]:
    old = inst("big", profile="4g.20gb", start=0)
    view = cluster([old])
    plan = the_plan(decide(view, violation()))
    assert plan.break_before_make
    return plan, view


def test_break_before_make_runs_retire_then_create() -> None:
    plan, view = bbm()
    after = the_plan(decide(with_plan(view, plan), done_event(plan, 0), now=NOW + 2))
    assert [s.status for s in after.steps] == ["done", "sent"]


@pytest.mark.parametrize("how", ["failed", "timed out"])
def test_break_before_make_failure_makes_the_old_profile_again(how: str) -> None:
    plan, view = bbm()
    plan = the_plan(decide(with_plan(view, plan), done_event(plan, 0), now=NOW + 2))
    new = plan.steps[1]
    gone = with_plan(cluster([]), plan)
    if how == "failed":
        bad = CommandFailed(command_id=new.command_id, node="n1", code=ErrorCode.NOT_SUPPORTED)
        out = decide(gone, bad, now=NOW + 3)
    else:
        spent = msgspec.structs.replace(new, attempts=POLICY.max_step_attempts)
        plan = msgspec.structs.replace(plan, steps=[plan.steps[0], spent])
        out = tick(with_plan(cluster([]), plan), NOW + 2 + POLICY.step_timeout_s + 1)
    final = the_plan(out)
    undo = [s for s in final.steps if s.rollback]
    if how == "timed out":  # the new slice may exist: retire it before making the old again
        assert (undo[0].op, undo[0].instance_id) == ("retire", new.instance_id)
        undo = undo[1:]
    [back] = undo
    assert (back.op, back.profile, back.start, back.node) == ("create", "4g.20gb", 0, "n1")
    assert back.instance_id == "big-back"
    [evt] = events(out)
    assert isinstance(evt, ScaleFailed) and "again" in evt.reason
    # the old profile's reservation blocks others while the undo runs
    after = reserved_slices(with_plan(cluster([]), final))[("n1", 0)]
    assert [(r.profile, r.start) for r in after] == [("4g.20gb", 0)]


def test_rollback_that_fails_fails_the_plan() -> None:
    plan, view = bbm()
    plan = the_plan(decide(with_plan(view, plan), done_event(plan, 0), now=NOW + 2))
    new = plan.steps[1]
    bad = CommandFailed(command_id=new.command_id, node="n1", code=ErrorCode.NOT_SUPPORTED)
    undoing = the_plan(decide(with_plan(cluster([]), plan), bad, now=NOW + 3))
    back = undoing.steps[2]
    worse = CommandFailed(command_id=back.command_id, node="n1", code=ErrorCode.NOT_SUPPORTED)
    out = decide(with_plan(cluster([]), undoing), worse, now=NOW + 4)
    final = the_plan(out)
    assert final.status == "failed"
    [evt] = events(out)
    assert isinstance(evt, ScaleFailed) and "rollback failed" in evt.reason


# Restart safety ----------------------------------------------------------------------
def test_fresh_memory_resumes_a_half_done_plan() -> None:
    plan, out = scale_up()
    plan = the_plan(decide(running(plan), done_event(plan, 0), now=NOW + 2, memory=out.memory))
    # a new leader: same plan in KV, empty memory; the retire step was sent once
    resumed = tick(running(plan), NOW + 3, Memory())
    [cmd] = commands(resumed)
    assert isinstance(cmd, RetireInstance) and cmd.command_id == plan.steps[1].command_id
    assert not the_plan_written(resumed)
    # and it is not sent again at once
    assert tick(running(plan), NOW + 4, resumed.memory).effects == ()
    # its result finishes the plan as before
    done = decide(running(plan), done_event(plan, 1), now=NOW + 5, memory=Memory())
    assert the_plan(done).status == "done"


def test_fresh_memory_sends_a_step_that_was_never_sent() -> None:
    plan, _ = scale_up()
    new, old = plan.steps
    crashed = msgspec.structs.replace(
        plan, steps=[msgspec.structs.replace(new, status="done"), old]
    )
    out = tick(running(crashed), NOW + 3, Memory())
    after = the_plan(out)
    assert after.steps[1].status == "sent" and after.steps[1].attempts == 1
    [cmd] = commands(out)
    assert isinstance(cmd, RetireInstance)


# Reservations and other models -------------------------------------------------------
def test_every_step_in_flight_reserves_its_slice() -> None:
    steps = [
        PlanStep(op="create", command_id="c1", instance_id="a", node="n1", profile="1g.5gb",
                 start=6, status="done"),
        PlanStep(op="create", command_id="c2", instance_id="b", node="n1", profile="2g.10gb",
                 start=2, status="sent"),
        PlanStep(op="create", command_id="c3", instance_id="c", node="n1", profile="1g.5gb",
                 start=5, status="pending"),
        PlanStep(op="create", command_id="c4", instance_id="d", node="n1", profile="1g.5gb",
                 start=4, status="failed"),
    ]  # fmt: skip
    plan = Plan(plan_id="p", model_id=MODEL, action="scale_out", status="running", steps=steps)
    got = {(r.profile, r.start) for r in reserved_slices(with_plan(cluster([]), plan))[("n1", 0)]}
    assert got == {("1g.5gb", 6), ("2g.10gb", 2), ("1g.5gb", 5)}


def test_model_removed_mid_plan_fails_its_create() -> None:
    plan, out = scale_up()
    step = plan.steps[0]
    fail = CommandFailed(command_id=step.command_id, node="n1", code=ErrorCode.ENGINE_FAILED)
    view = with_plan(cluster([OLD], models=[]), plan)
    final = the_plan(decide(view, fail, now=NOW + 1, memory=out.memory))
    assert final.status == "failed" and "no longer registered" in final.reason
