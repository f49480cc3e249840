"""Removing a model retires its instances, once, after any plan in flight."""

from __future__ import annotations

from migserve_scaler.core import Memory, on_tick
from migserve_shared.messages import ModelRemoved, Plan, PlanStep, RetireInstance, ScaleDecided
from test_scaler_support import (
    MODEL,
    NOW,
    POLICY,
    TRACE,
    cluster,
    commands,
    counter_ids,
    decide,
    events,
    inst,
    spec,
    the_plan,
    with_plan,
)


def _removed() -> ModelRemoved:
    return ModelRemoved(model_id=MODEL, trace_id=TRACE, time=NOW)


def test_removal_retires_every_live_instance_in_one_plan() -> None:
    view = cluster(
        [inst("a", start=0), inst("b", start=1, state="starting"), inst("gone", start=2,
         state="stopped")],
        models=[],
    )  # fmt: skip
    out = decide(view, _removed())
    plan = the_plan(out)
    assert (plan.action, plan.trace_id) == ("remove", TRACE)
    assert [(s.op, s.instance_id) for s in plan.steps] == [("retire", "a"), ("retire", "b")]
    [first] = commands(out)  # steps run one after another
    assert isinstance(first, RetireInstance) and first.instance_id == "a"
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.action == "remove"
    assert "no longer registered" in plan.reason
    assert not out.memory.removing


def test_a_model_registered_again_is_left_alone() -> None:
    out = decide(cluster([inst("a")], models=[spec()]), _removed())
    assert out.effects == () and not out.memory.removing


def test_removal_without_instances_does_nothing() -> None:
    out = decide(cluster([], models=[]), _removed())
    assert out.effects == () and not out.memory.removing


def test_removal_waits_for_the_plan_in_flight_then_the_tick_starts_it() -> None:
    busy = Plan(
        plan_id="plan-busy", model_id=MODEL, action="scale_in", status="running",
        steps=[PlanStep(op="retire", command_id="c1", instance_id="b", node="n1",
                        status="sent", sent_at=NOW)],
        trace_id="x" * 32, created=NOW, updated=NOW,
    )  # fmt: skip
    view = with_plan(cluster([inst("a"), inst("b", start=1)], models=[]), busy)
    waiting = decide(view, _removed())
    assert waiting.effects == () and waiting.memory.removing == {MODEL: TRACE}

    still = on_tick(view, waiting.memory, NOW + 1, policy=POLICY, ids=counter_ids())
    assert not any(isinstance(c, RetireInstance) and c.instance_id == "a" for c in commands(still))

    done = Plan(**{**{f: getattr(busy, f) for f in busy.__struct_fields__}, "status": "done"})
    after = with_plan(cluster([inst("a")], models=[]), done)
    out = on_tick(after, waiting.memory, NOW + 2, policy=POLICY, ids=counter_ids())
    plan = the_plan(out)
    assert (plan.action, plan.trace_id) == ("remove", TRACE)
    assert [s.instance_id for s in plan.steps] == ["a"]
    assert not out.memory.removing


def test_pending_removal_is_dropped_when_the_model_comes_back() -> None:
    memory = Memory(removing={MODEL: TRACE})
    view = cluster([inst("a")], models=[spec()])
    out = on_tick(view, memory, NOW, policy=POLICY, ids=counter_ids())
    assert not out.memory.removing
    assert not [c for c in commands(out) if isinstance(c, RetireInstance)]
