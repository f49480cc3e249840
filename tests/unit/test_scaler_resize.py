"""SLO violations: step up, scale out, limits, cooldown, swap cost, moves, break before make."""

from __future__ import annotations

import pytest
from migserve_scaler.core import Memory, Policy
from migserve_scaler.core.cluster import placement_nodes, reserved_slices
from migserve_scaler.core.ladder import step_down, steps_up
from migserve_shared import mig
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CreateInstance,
    Demand,
    Plan,
    PlanStep,
    RetireInstance,
    ScaleDecided,
    ScaleFailed,
)
from test_scaler_support import (
    FIXED,
    MODEL,
    NOW,
    OTHER,
    POLICY,
    TRACE,
    cluster,
    commands,
    decide,
    events,
    inst,
    spec,
    the_plan,
    violation,
    with_plan,
)

A100 = mig.gpu_model("A100-SXM4-40GB")


# The ladder ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "fields", "up", "down"),
    [
        ((1, 1), {}, [(2, 2), (4, 3), (4, 4), (8, 7)], None),
        ((2, 2), {}, [(4, 3), (4, 4), (8, 7)], (1, 1)),
        ((4, 3), {}, [(4, 4), (8, 7)], (2, 2)),
        ((8, 7), {}, [], (4, 4)),
        # 1g.5gb (4864 MB) cannot hold 6000 MB: the bottom step is 1g.10gb (two memory slices)
        ((2, 2), {"memory_mb": 6000}, [(4, 3), (4, 4), (8, 7)], (2, 1)),
        ((2, 1), {"memory_mb": 6000}, [(2, 2), (4, 3), (4, 4), (8, 7)], None),
        ((2, 2), {"max_profile": "3g.20gb"}, [(4, 3)], (1, 1)),
        ((4, 3), {"max_profile": "3g.20gb"}, [], (2, 2)),
        ((2, 2), {"min_profile": "2g.10gb"}, [(4, 3), (4, 4), (8, 7)], None),
    ],
)
def test_ladder(
    current: tuple[int, int], fields: dict, up: list, down: tuple[int, int] | None
) -> None:
    s = spec(**fields)
    assert steps_up(A100, s, current) == up
    assert step_down(A100, s, current) == down


# Step up ------------------------------------------------------------------------------
def test_violation_steps_the_instance_up_make_before_break() -> None:
    view = cluster([inst("i1", profile="1g.5gb", start=0)])
    out = decide(view, violation())
    plan = the_plan(out)
    assert plan.action == "scale_up" and plan.status == "running" and plan.trace_id == TRACE
    assert not plan.break_before_make
    new, old = plan.steps
    assert (new.op, new.profile, new.replaces, new.status) == ("create", "2g.10gb", "i1", "sent")
    assert (old.op, old.instance_id, old.status) == ("retire", "i1", "pending")
    assert "80.0 ms > SLO 50 ms for 3 windows of 30 s" in plan.reason
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.trace_id == TRACE
    assert (decided.action, decided.profile, decided.instance_id) == (
        "scale_up",
        "2g.10gb",
        new.instance_id,
    )
    assert not decided.break_before_make
    [cmd] = commands(out)
    assert isinstance(cmd, CreateInstance) and cmd.trace_id == TRACE
    assert (cmd.profile, cmd.start, cmd.instance_id) == (new.profile, new.start, new.instance_id)
    # the new slice goes where the old one is not
    assert new.start != 0


def test_violation_steps_up_the_smallest_of_several_replicas() -> None:
    view = cluster(
        [
            inst("big", profile="3g.20gb", start=4),
            inst("small", profile="1g.5gb", start=0, created=5),
        ]
    )
    plan = the_plan(decide(view, violation()))
    assert plan.steps[0].replaces == "small" and plan.steps[0].profile == "2g.10gb"


# Scale out and limits ------------------------------------------------------------------
def test_at_max_profile_scales_out_with_the_same_profile() -> None:
    view = cluster([inst("i1", profile="2g.10gb")], models=[spec(max_profile="2g.10gb")])
    out = decide(view, violation())
    plan = the_plan(out)
    assert plan.action == "scale_out"
    [create] = plan.steps
    assert (create.op, create.profile, create.replaces) == ("create", "2g.10gb", "")
    assert "2 of at most 4" in plan.reason
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.instance_id == create.instance_id


def test_horizontal_policy_scales_out_first_then_up_at_max_replicas() -> None:
    s = spec(scaling="horizontal", max_replicas=2)
    out = decide(cluster([inst("i1")], models=[s]), violation())
    assert the_plan(out).action == "scale_out"
    two = cluster([inst("i1"), inst("i2", start=1)], models=[s])
    assert the_plan(decide(two, violation())).action == "scale_up"


def test_at_both_limits_reports_at_limit_once_per_interval() -> None:
    s = spec(max_profile="2g.10gb", max_replicas=1)
    view = cluster([inst("i1", profile="2g.10gb")], models=[s])
    first = decide(view, violation())
    [failed] = events(first)
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.AT_LIMIT
    assert failed.trace_id == TRACE and "at most 1 replicas" in failed.reason
    assert not commands(first)
    again = decide(view, violation(), now=NOW + 30, memory=first.memory)
    assert again.effects == () and again.notes
    later = decide(view, violation(), now=NOW + 61, memory=first.memory)
    assert [e.code for e in events(later)] == [ErrorCode.AT_LIMIT]  # type: ignore[union-attr]


def test_no_room_anywhere_reports_no_capacity() -> None:
    full = [inst("i1", profile="1g.5gb", start=0)] + [
        inst(f"x{k}", profile="1g.5gb", start=k, model=FIXED) for k in range(1, 7)
    ]
    view = cluster(full)
    [failed] = events(decide(view, violation()))
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.NO_CAPACITY


def test_vertical_falls_back_to_a_replica_when_no_bigger_slice_can_be_had() -> None:
    # 2g fits nowhere (1g slices at 0..4 leave 5 and 6: 2g starts at 0, 2, 4);
    # a 1g replica still fits at 5
    rows = [inst("i1", start=0)] + [inst(f"x{k}", start=k, model=FIXED) for k in range(1, 5)]
    policy = Policy(max_moves=0, allow_break_before_make=False)
    plan = the_plan(decide(cluster(rows), violation(), policy=policy))
    assert plan.action == "scale_out" and plan.steps[0].profile == "1g.5gb"


# Gates ---------------------------------------------------------------------------------
def test_cooldown_after_a_finished_plan() -> None:
    done = Plan(plan_id="p0", model_id=MODEL, action="create", status="done", updated=NOW - 10)
    view = with_plan(cluster([inst("i1")]), done)
    out = decide(view, violation())
    assert out.effects == () and "cooling down" in out.notes[0]
    later = decide(view, violation(), now=NOW + 51)
    assert the_plan(later).action == "scale_up"


def test_one_plan_in_flight_per_model() -> None:
    running = Plan(plan_id="p0", model_id=MODEL, action="scale_up", status="running")
    out = decide(with_plan(cluster([inst("i1")]), running), violation())
    assert out.effects == () and "in flight" in out.notes[0]


def test_no_ready_instance_decides_nothing() -> None:
    out = decide(cluster([inst("i1", state="starting")]), violation())
    assert out.effects == () and out.notes


def test_instances_another_plan_moves_are_left_alone() -> None:
    step = PlanStep(op="retire", command_id="c9", instance_id="i1", node="n1", model_id=MODEL)
    moving = Plan(plan_id="p9", model_id=OTHER, action="scale_up", status="running", steps=[step])
    view = with_plan(cluster([inst("i1")], models=[spec(), spec(OTHER)]), moving)
    out = decide(view, violation())
    assert out.effects == () and "no ready instance" in out.notes[0]


# Swap cost -----------------------------------------------------------------------------
def test_swap_slower_than_the_load_is_not_started() -> None:
    view = cluster([inst("i1")])
    slow = Memory(swap_cost={("sim", "2g.10gb"): 200.0})
    out = decide(view, violation(), memory=slow)
    [failed] = events(out)
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.SWAP_TOO_SLOW
    assert "200.0 s" in failed.reason and "90.0 s" in failed.reason
    assert not commands(out)
    # rate limited like every other failure
    assert decide(view, violation(), now=NOW + 5, memory=out.memory).effects == ()
    # a load expected to last longer makes the same swap worth it
    patient = Policy(load_duration_factor=3.0)
    assert the_plan(decide(view, violation(), memory=slow, policy=patient)).action == "scale_up"


def test_default_swap_cost_applies_until_measured() -> None:
    view = cluster([inst("i1")])
    short = violation(windows=1, window_s=4.0)  # 4 s of load, default cost 5 s
    [failed] = events(decide(view, short))
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.SWAP_TOO_SLOW
    fast = Memory(swap_cost={("sim", "2g.10gb"): 1.0})
    assert the_plan(decide(view, short, memory=fast)).action == "scale_up"


# Moves ---------------------------------------------------------------------------------
def test_moves_of_another_models_instance_open_room_for_the_step_up() -> None:
    rows = [
        inst("i1", start=0),
        inst("x", start=2, model=OTHER),
        inst("y", profile="3g.20gb", start=4, model=FIXED),
        inst("z", node="n2", profile="4g.20gb", start=0, model=FIXED),
        inst("w", node="n2", profile="2g.10gb", start=4, model=FIXED),
    ]
    view = cluster(rows, gpus={"n1": 1, "n2": 1}, models=[spec(), spec(OTHER)])
    out = decide(view, violation())
    plan = the_plan(out)
    assert plan.action == "scale_up" and not plan.break_before_make
    ops = [(s.op, s.model_id, s.replaces, s.instance_id) for s in plan.steps]
    assert ops[0][:3] == ("create", OTHER, "x")
    assert ops[1] == ("retire", OTHER, "", "x")
    assert ops[2][:3] == ("create", "", "i1") and plan.steps[2].profile == "2g.10gb"
    assert ops[3] == ("retire", "", "", "i1")
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.instance_id == plan.steps[2].instance_id
    [cmd] = commands(out)  # the move's create, for the other model
    assert isinstance(cmd, CreateInstance) and cmd.model.model_id == OTHER
    assert "move" in plan.reason


# Break before make ---------------------------------------------------------------------
def test_break_before_make_when_nothing_else_fits() -> None:
    view = cluster([inst("i1", profile="4g.20gb", start=0)])
    out = decide(view, violation())
    plan = the_plan(out)
    assert plan.break_before_make and plan.action == "scale_up"
    old, new = plan.steps
    assert (old.op, old.instance_id, old.status) == ("retire", "i1", "sent")
    assert (new.op, new.profile, new.start, new.replaces) == ("create", "7g.40gb", 0, "i1")
    [decided] = events(out)
    assert isinstance(decided, ScaleDecided) and decided.break_before_make
    assert decided.profile == "7g.40gb" and "break before make" in decided.reason
    [cmd] = commands(out)
    assert isinstance(cmd, RetireInstance) and cmd.instance_id == "i1"


def test_make_before_break_preferred_when_another_gpu_is_free() -> None:
    view = cluster([inst("i1", profile="4g.20gb", start=0)], gpus={"n1": 1, "n2": 1})
    plan = the_plan(decide(view, violation()))
    assert not plan.break_before_make and plan.steps[0].node == "n2"


def test_break_before_make_can_be_turned_off() -> None:
    view = cluster([inst("i1", profile="4g.20gb", start=0)], models=[spec(max_replicas=1)])
    out = decide(view, violation(), policy=Policy(allow_break_before_make=False))
    [failed] = events(out)
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.NO_CAPACITY


def test_during_break_before_make_the_new_slice_is_reserved_and_demand_waits() -> None:
    view = cluster([inst("i1", profile="4g.20gb", start=0)], models=[spec(), spec(OTHER)])
    plan = the_plan(decide(view, violation()))
    during = with_plan(view, plan)
    # nothing else may take the part of the 7g slice the 4g does not cover
    [n1] = placement_nodes(during)
    assert n1.gpus[0].slices == []
    assert [(r.profile, r.start) for r in reserved_slices(during)[("n1", 0)]] == [("7g.40gb", 0)]
    other = decide(during, Demand(model_id=OTHER, trace_id="o" * 32, time=NOW))
    [failed] = events(other)
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.NO_CAPACITY
    # the old instance is gone and the gateway holds requests: its demand starts nothing
    gone = with_plan(cluster([], models=[spec(), spec(OTHER)]), plan)
    out = decide(gone, Demand(model_id=MODEL, trace_id="d" * 32, time=NOW))
    assert out.effects == () and "in flight" in out.notes[0]


def test_unknown_bound_is_a_bad_request() -> None:
    view = cluster([inst("i1")], models=[spec(max_profile="9g.99gb")])
    [failed] = events(decide(view, violation()))
    assert isinstance(failed, ScaleFailed) and failed.code is ErrorCode.BAD_REQUEST


def test_policy_default_is_valid_and_rejects_bad_values() -> None:
    assert POLICY.max_step_attempts == 2
    with pytest.raises(ValueError, match="max_step_attempts"):
        Policy(max_step_attempts=0)
    with pytest.raises(ValueError, match="swap_cost_alpha"):
        Policy(swap_cost_alpha=0)
