"""Instances lost outside a plan are replaced; models below min_replicas get instances."""

from __future__ import annotations

import msgspec
import pytest
from migserve_scaler.core import ClusterView, Memory, Outcome, Policy, PutPlan, on_tick
from migserve_scaler.core.view import Lost
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CreateInstance,
    Demand,
    InstanceFailed,
    InstanceRecord,
    Plan,
    PlanStep,
    ScaleDecided,
    ScaleFailed,
)
from test_scaler_support import (
    MODEL,
    NOW,
    OTHER,
    POLICY,
    cluster,
    commands,
    counter_ids,
    decide,
    events,
    idle_snapshot,
    inst,
    of_type,
    spec,
    the_plan,
    with_plan,
)

FAIL_TRACE = "f" * 32
A = inst("a", profile="2g.10gb", start=0)
B = inst("b", profile="2g.10gb", start=2)


def failed(rec: InstanceRecord = A, *, trace: str = FAIL_TRACE) -> InstanceFailed:
    return InstanceFailed(
        instance_id=rec.instance_id,
        model_id=rec.model_id,
        node=rec.node,
        profile=rec.profile,
        reason="engine exited with code -9",
        trace_id=trace,
        time=NOW,
    )


def saw(*records: InstanceRecord) -> Memory:
    """Memory of a scaler that last saw ``records`` live."""
    seen: dict[str, dict[str, InstanceRecord]] = {}
    for r in records:
        seen.setdefault(r.model_id, {})[r.instance_id] = r
    return Memory(seen=seen)


def ticked(view: ClusterView, memory: Memory | None = None, *, now: float = NOW) -> Outcome:
    return on_tick(view, memory or Memory(), now, policy=POLICY, ids=counter_ids())


def done_plan(
    created: str, *, updated: float = NOW - 5, reason: str = "demand", model: str = MODEL
) -> Plan:
    step = PlanStep(
        op="create", command_id="cmd-old", instance_id=created, node="n1", profile="2g.10gb",
        status="done",
    )  # fmt: skip
    return Plan(
        plan_id="plan-old", model_id=model, action="create", reason=reason, status="done",
        steps=[step], created=updated - 10, updated=updated,
    )  # fmt: skip


def replacement(out: Outcome, lost: str = "a") -> Plan:
    plan = the_plan(out)
    assert plan.action == "create"
    assert plan.reason.startswith(f"replace failed instance {lost}:"), plan.reason
    return plan


# Replacement on instance.failed -------------------------------------------------------
def test_failed_instance_outside_a_plan_is_replaced_at_once() -> None:
    view = cluster([B])  # a's record is gone: the agent deleted it
    out = decide(view, failed(), memory=saw(A, B))
    plan = replacement(out)
    assert plan.trace_id == FAIL_TRACE and plan.status == "running"
    [step] = plan.steps
    assert (step.op, step.profile, step.status) == ("create", "2g.10gb", "sent")
    [cmd] = commands(out)
    assert isinstance(cmd, CreateInstance) and cmd.profile == "2g.10gb"
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.trace_id == FAIL_TRACE
    assert "a" in out.memory.failed and out.memory.lost.get(MODEL, ()) == ()
    assert set(out.memory.seen[MODEL]) == {"b"}


def test_the_only_instance_failing_moments_after_its_plan_is_replaced() -> None:
    """The scaler never saw it live (no tick yet), but the model's last plan made it."""
    view = with_plan(cluster([]), done_plan("a"))
    out = decide(view, failed())
    plan = replacement(out)
    assert plan.trace_id == FAIL_TRACE


def test_demand_right_after_a_failure_is_not_blocked_by_the_settling_plan() -> None:
    view = with_plan(cluster([]), done_plan("a"))
    demand = Demand(model_id=MODEL, trace_id="d" * 32, time=NOW)
    blocked = decide(view, demand)  # no failure known: the instance may just be late
    assert blocked.effects == () and "already has an instance" in blocked.notes[-1]
    out = decide(view, demand, memory=Memory(failed={"a": NOW - 1}))
    assert the_plan(out).action == "create"
    [cmd] = commands(out)
    assert isinstance(cmd, CreateInstance)


def test_demand_before_the_failure_event_starts_the_replacement_once() -> None:
    view = cluster([])
    demand = Demand(model_id=MODEL, trace_id="d" * 32, time=NOW)
    out = decide(view, demand, memory=saw(A))
    plan = replacement(out)
    later = with_plan(view, plan)
    again = decide(later, failed(), memory=out.memory)  # the failure event comes after
    assert of_type(again, PutPlan) == [] and commands(again) == []
    assert again.memory.lost.get(MODEL, ()) == ()


def test_no_duplicate_while_the_replacement_is_in_flight() -> None:
    view = cluster([B])
    first = decide(view, failed(), memory=saw(A, B))
    plan = replacement(first)
    running = with_plan(view, plan)
    # the event again (redelivered), a demand, and ticks: nothing new
    for memory in (first.memory, saw(A, B)):  # also when the memory after it was lost
        redelivered = decide(running, failed(), memory=memory)
        assert of_type(redelivered, PutPlan) == []
        assert redelivered.memory.lost.get(MODEL, ()) == ()
        tick = ticked(running, memory)
        assert of_type(tick, PutPlan) == []  # at most the step in flight is sent again
        assert {c.command_id for c in commands(tick)} <= {plan.steps[0].command_id}
    demand = decide(running, Demand(model_id=MODEL, time=NOW), memory=first.memory)
    assert of_type(demand, PutPlan) == []


def test_failure_of_a_step_in_flight_is_the_plans_business() -> None:
    view = cluster([])
    first = decide(view, Demand(model_id=MODEL, trace_id="d" * 32, time=NOW))
    plan = the_plan(first)
    [step] = plan.steps
    lost = InstanceFailed(
        instance_id=step.instance_id, model_id=MODEL, node=step.node, profile=step.profile,
        code=ErrorCode.ENGINE_FAILED, time=NOW,
    )  # fmt: skip
    out = decide(with_plan(view, plan), lost, now=NOW + 1)
    retried = the_plan(out)
    assert retried.plan_id == plan.plan_id  # the same plan tries again; no new plan
    assert retried.steps[0].attempts == 2
    assert out.memory.lost.get(MODEL, ()) == ()


def test_an_instance_a_plan_retires_is_not_replaced() -> None:
    retire = PlanStep(op="retire", command_id="c1", instance_id="a", node="n1", status="sent")
    plan = Plan(plan_id="p", model_id=MODEL, action="scale_in", status="running", steps=[retire])
    view = with_plan(cluster([B]), plan)
    out = decide(view, failed(), memory=saw(A, B))
    assert all(p.plan.plan_id == "p" for p in of_type(out, PutPlan))
    assert out.memory.lost.get(MODEL, ()) == ()


def test_a_loss_while_another_plan_runs_waits_for_it() -> None:
    other = Plan(
        plan_id="p", model_id=MODEL, action="scale_out", status="running", created=NOW,
        steps=[PlanStep(op="create", command_id="c1", instance_id="c", node="n1",
                        profile="1g.5gb", start=6, status="sent", attempts=1, sent_at=NOW)],
    )  # fmt: skip
    busy = with_plan(cluster([B]), other)
    out = decide(busy, failed(), memory=saw(A, B))
    assert of_type(out, PutPlan) == []
    assert [x.instance_id for x in out.memory.lost[MODEL]] == ["a"]
    assert of_type(ticked(busy, out.memory), PutPlan) == []  # still waits
    finished = msgspec.structs.replace(other, status="done", updated=NOW)
    c = inst("c", profile="1g.5gb", start=6)
    after = ticked(with_plan(cluster([B, c]), finished), out.memory, now=NOW + 1)
    replacement(after)
    assert after.memory.lost.get(MODEL, ()) == ()


def test_two_losses_are_replaced_one_plan_at_a_time() -> None:
    view = cluster([])
    out = decide(view, failed(A), memory=saw(A, B))  # b vanished too
    first = replacement(out, "a")
    assert [x.instance_id for x in out.memory.lost[MODEL]] == ["b"]
    new = first.steps[0]
    ready = inst(new.instance_id, profile=new.profile, start=new.start, gpu=new.gpu_index)
    done = msgspec.structs.replace(first, status="done", updated=NOW + 5)
    second = ticked(with_plan(cluster([ready]), done), out.memory, now=NOW + 6)
    replacement(second, "b")


def test_an_instance_vanishing_without_an_event_is_replaced_on_the_tick() -> None:
    a = msgspec.structs.replace(A, trace_id="a" * 32)
    out = ticked(cluster([B]), saw(a, B))
    plan = replacement(out)
    assert plan.trace_id == "a" * 32  # the lost instance's own story goes on


def test_draining_instances_are_being_retired_not_lost() -> None:
    draining = msgspec.structs.replace(A, state="draining")
    out = ticked(cluster([draining, B]), saw(A, B))
    assert of_type(out, PutPlan) == [] and out.memory.lost.get(MODEL, ()) == ()
    assert set(out.memory.seen[MODEL]) == {"b"}


def test_an_idle_model_that_may_scale_to_zero_is_not_replaced() -> None:
    lazy = spec(idle_to_zero_s=60)
    view = cluster([], models=[lazy])
    memory = decide(view, idle_snapshot(), memory=saw(A)).memory
    out = decide(view, failed(), memory=memory)
    assert of_type(out, PutPlan) == [] and out.memory.lost.get(MODEL, ()) == ()
    assert "not replaced" in out.notes[-1]


def test_unregistered_models_are_forgotten() -> None:
    view = cluster([], models=[spec(OTHER)])
    out = decide(view, failed(), memory=saw(A))
    assert out.effects == ()
    assert MODEL not in out.memory.seen and MODEL not in out.memory.lost


def test_no_room_for_the_replacement_is_reported_and_retried() -> None:
    full = inst("x", model=OTHER, profile="7g.40gb", start=0)
    view = cluster([full], models=[spec(), spec(OTHER)])
    out = decide(view, failed(), memory=saw(A, full))
    [report] = events(out)
    assert isinstance(report, ScaleFailed) and report.code is ErrorCode.NO_CAPACITY
    assert [x.instance_id for x in out.memory.lost[MODEL]] == ["a"]  # kept for later
    freed = ticked(cluster([]), out.memory, now=NOW + 2)
    replacement(freed)


def test_failures_are_forgotten_after_a_while() -> None:
    memory = Memory(failed={"a": NOW - 10_000, "b": NOW})
    out = on_tick(cluster([]), memory, NOW, policy=POLICY)
    assert set(out.memory.failed) == {"b"}


# min_replicas --------------------------------------------------------------------------
def test_min_replicas_creates_instances_on_the_tick() -> None:
    view = cluster([], models=[spec(min_replicas=2)])
    out = ticked(view)
    plan = the_plan(out)
    assert plan.action == "create" and plan.reason.startswith("min_replicas:")
    assert "0 live of at least 2" in plan.reason and plan.trace_id
    [cmd] = commands(out)
    assert isinstance(cmd, CreateInstance)
    assert of_type(ticked(with_plan(view, plan)), PutPlan) == []  # one plan at a time


def test_min_replicas_adds_one_more_of_the_live_profile() -> None:
    view = cluster([A], models=[spec(min_replicas=2)])
    plan = the_plan(ticked(view))
    assert plan.action == "scale_out" and plan.steps[0].profile == "2g.10gb"
    assert ticked(cluster([A, B], models=[spec(min_replicas=2)])).effects == ()


def test_min_replicas_waits_for_a_settling_or_failed_plan() -> None:
    view = cluster([], models=[spec(min_replicas=1)])
    settling = with_plan(view, done_plan("new", updated=NOW - 1))
    assert of_type(ticked(settling), PutPlan) == []
    failed_plan = msgspec.structs.replace(done_plan("new", updated=NOW - 1), status="failed")
    assert of_type(ticked(with_plan(view, failed_plan)), PutPlan) == []
    later = ticked(with_plan(view, failed_plan), now=NOW + POLICY.replace_backoff_s)
    assert the_plan(later).action == "create"


def test_min_replicas_without_ids_decides_nothing_new() -> None:
    view = cluster([], models=[spec(min_replicas=1)])
    assert on_tick(view, Memory(), NOW, policy=POLICY).effects == ()


def test_min_replicas_is_bounded_by_max_replicas() -> None:
    view = cluster([A], models=[spec(min_replicas=3, max_replicas=1)])
    assert ticked(view).effects == ()


def test_floors_of_two_models_in_one_tick_take_different_slices() -> None:
    models = [spec(min_replicas=1, memory_mb=15000), spec(OTHER, min_replicas=1, memory_mb=15000)]
    out = ticked(cluster([], models=models))
    puts = of_type(out, PutPlan)
    assert len(puts) == 2
    places = {(p.plan.steps[0].node, p.plan.steps[0].start) for p in puts}
    assert len(places) == 2


def test_replace_backoff_policy_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="replace_backoff_s"):
        Policy(replace_backoff_s=-1)


def test_lost_entries_are_set_and_cleared() -> None:
    first = Lost(instance_id="a", model_id=MODEL, profile="1g.5gb", trace_id="", since=NOW)
    memory = Memory().with_lost(MODEL, (first,))
    assert memory.with_lost(MODEL, (first,)) is memory
    assert MODEL not in memory.with_lost(MODEL, ()).lost
