"""Underload and idleness: scale in, step down, scale to zero."""

from __future__ import annotations

from migserve_scaler.core import Memory
from migserve_shared.messages import CreateInstance, Demand, Plan, RetireInstance, ScaleDecided
from test_scaler_support import (
    MODEL,
    NOW,
    POLICY,
    TRACE,
    cluster,
    commands,
    decide,
    events,
    idle_snapshot,
    inst,
    spec,
    the_plan,
    underload,
    violation,
    with_plan,
)


# Scale in ----------------------------------------------------------------------------
def test_underload_retires_the_smallest_newest_replica() -> None:
    view = cluster(
        [
            inst("old-small", profile="1g.5gb", start=0, created=1),
            inst("new-small", profile="1g.5gb", start=1, created=2),
            inst("big", profile="3g.20gb", start=4, created=0),
        ]
    )
    out = decide(view, underload())
    plan = the_plan(out)
    assert plan.action == "scale_in" and plan.trace_id == TRACE
    [step] = plan.steps
    assert (step.op, step.instance_id, step.status) == ("retire", "new-small", "sent")
    [cmd] = commands(out)
    assert isinstance(cmd, RetireInstance) and cmd.instance_id == "new-small"
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.action == "scale_in"
    assert "2 left, at least 1" in plan.reason


def test_min_replicas_holds_then_steps_down_instead() -> None:
    view = cluster(
        [inst("a", profile="2g.10gb", start=0), inst("b", profile="2g.10gb", start=2)],
        models=[spec(min_replicas=2)],
    )
    plan = the_plan(decide(view, underload()))
    assert plan.action == "scale_down"
    new, old = plan.steps
    assert (new.op, new.profile, new.replaces) == ("create", "1g.5gb", old.instance_id)
    assert old.op == "retire"


# Step down ---------------------------------------------------------------------------
def test_last_replica_steps_down_make_before_break() -> None:
    view = cluster([inst("i1", profile="3g.20gb", start=4)])
    out = decide(view, underload())
    plan = the_plan(out)
    assert plan.action == "scale_down" and not plan.break_before_make
    new, old = plan.steps
    assert (new.op, new.profile, new.status, new.replaces) == ("create", "2g.10gb", "sent", "i1")
    assert (old.op, old.instance_id, old.status) == ("retire", "i1", "pending")
    [cmd] = commands(out)
    assert isinstance(cmd, CreateInstance) and cmd.profile == "2g.10gb"


def test_never_below_the_memory_the_model_needs() -> None:
    big = spec(memory_mb=6000)  # more than 1g.5gb's 4864 MB
    plan = the_plan(decide(cluster([inst("i1", profile="2g.10gb")], models=[big]), underload()))
    assert plan.steps[0].profile == "1g.10gb"
    bottom = decide(cluster([inst("i1", profile="1g.10gb")], models=[big]), underload())
    assert bottom.effects == () and "smallest profile" in bottom.notes[0]


def test_never_below_min_profile() -> None:
    view = cluster([inst("i1", profile="2g.10gb")], models=[spec(min_profile="2g.10gb")])
    out = decide(view, underload())
    assert out.effects == () and "smallest profile" in out.notes[0]


def test_no_step_down_without_room_for_the_smaller_slice() -> None:
    out = decide(cluster([inst("i1", profile="7g.40gb")]), underload())
    assert out.effects == () and "no room" in out.notes[0]


def test_underload_respects_cooldown_and_plans_in_flight() -> None:
    two = cluster([inst("a", start=0), inst("b", start=1)])
    done = Plan(plan_id="p0", model_id=MODEL, action="scale_up", status="done", updated=NOW - 1)
    assert decide(with_plan(two, done), underload()).effects == ()
    busy = Plan(plan_id="p1", model_id=MODEL, action="scale_up", status="running")
    assert decide(with_plan(two, busy), underload()).effects == ()


# Scale to zero -----------------------------------------------------------------------
def zero_spec(**fields: object) -> list:
    return [spec(**{"min_replicas": 0, "idle_to_zero_s": 60, **fields})]


def test_idle_model_is_scaled_to_zero_after_its_idle_period() -> None:
    view = cluster([inst("a", start=0), inst("b", start=1)], models=zero_spec())
    first = decide(view, idle_snapshot(at=NOW), now=NOW)
    assert first.effects == () and first.memory.idle_since == {MODEL: NOW - 10}
    early = decide(view, idle_snapshot(at=NOW + 45), now=NOW + 45, memory=first.memory)
    assert early.effects == ()
    due = decide(view, idle_snapshot(at=NOW + 50), now=NOW + 50, memory=early.memory)
    plan = the_plan(due)
    assert plan.action == "scale_in" and "scale to zero" in plan.reason
    assert [(s.op, s.instance_id) for s in plan.steps] == [("retire", "b"), ("retire", "a")]
    assert [s.status for s in plan.steps] == ["sent", "pending"]
    assert MODEL not in due.memory.idle_since
    [decided] = events(due)
    assert isinstance(decided, ScaleDecided) and decided.trace_id


def test_underload_evidence_counts_as_idleness_too() -> None:
    view = cluster([inst("a")], models=zero_spec())
    idle = {"tpot_ms": None, "in_flight": 0, "request_rate": 0.0, "tokens": 0, "window_s": 10.0}
    first = decide(view, underload(**idle), now=NOW)
    assert first.memory.idle_since == {MODEL: NOW - 10}
    due = decide(view, underload(**idle), now=NOW + 50, memory=first.memory)
    assert "scale to zero" in the_plan(due).reason


def test_load_resets_the_idle_clock() -> None:
    view = cluster([inst("a")], models=zero_spec())
    first = decide(view, idle_snapshot(at=NOW), now=NOW)
    busy = decide(view, idle_snapshot(at=NOW + 30, in_flight=1), now=NOW + 30, memory=first.memory)
    assert busy.memory.idle_since == {}
    again = decide(view, idle_snapshot(at=NOW + 55), now=NOW + 55, memory=busy.memory)
    assert again.effects == ()
    hot = decide(view, violation(), now=NOW + 56, memory=first.memory)
    assert MODEL not in hot.memory.idle_since


def test_no_scale_to_zero_unless_the_spec_allows_it() -> None:
    memory = Memory(idle_since={MODEL: NOW - 1000})
    for models in (zero_spec(min_replicas=1), [spec(idle_to_zero_s=0)], [spec(min_replicas=0)]):
        view = cluster([inst("a")], models=models)
        out = decide(view, idle_snapshot(at=NOW), now=NOW, memory=memory)
        assert out.effects == ()


def test_demand_brings_a_model_back_after_scale_to_zero() -> None:
    view = cluster([inst("a")], models=zero_spec())
    plan = the_plan(
        decide(
            view, idle_snapshot(at=NOW + 60), now=NOW + 60, memory=Memory(idle_since={MODEL: NOW})
        )
    )
    done = Plan(
        plan_id=plan.plan_id,
        model_id=MODEL,
        action=plan.action,
        status="done",
        steps=plan.steps,
        updated=NOW + 70,
    )
    empty = with_plan(cluster([], models=zero_spec()), done)
    demand = Demand(model_id=MODEL, trace_id="d" * 32, time=NOW + 71)
    back = the_plan(decide(empty, demand, now=NOW + 71))
    assert back.action == "create" and back.trace_id == "d" * 32


def test_snapshot_of_a_model_without_instances_changes_nothing() -> None:
    view = cluster([], models=zero_spec())
    out = decide(view, idle_snapshot(instances=[]), memory=Memory())
    assert out.effects == () and out.memory.idle_since == {}
    assert POLICY.cooldown_s == 60
