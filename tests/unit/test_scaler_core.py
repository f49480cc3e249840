"""The scaler's decision core: demand -> plan, step results, timeouts, failures."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec
import pytest
from migserve_scaler.core import (
    ClusterView,
    Memory,
    Outcome,
    PlanEntry,
    Policy,
    PublishEvent,
    PutPlan,
    SendCommand,
    on_event,
    on_tick,
)
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    CommandDone,
    CommandFailed,
    CreateInstance,
    Demand,
    Event,
    GpuState,
    InstanceFailed,
    InstanceReady,
    InstanceRecord,
    InstanceStarting,
    ModelSpec,
    NodeState,
    Plan,
    PlanStep,
    ScaleDecided,
    ScaleFailed,
    SliceState,
)

NOW = 1_000_000.0
MODEL = "org/small"
OTHER = "org/other"
POLICY = Policy(
    plan_timeout_s=180, retry_backoff_s=5, failure_report_interval_s=60, step_timeout_s=1000
)


def a100(name: str, *, full: bool = False) -> NodeState:
    slices = [SliceState(gi_id=1, profile_id=0, profile="7g.40gb", start=0)] if full else []
    return NodeState(
        node=name,
        gpus=[GpuState(index=0, uuid=f"GPU-{name}", model="A100-SXM4-40GB", slices=slices)],
    )


def specs(*ids: str) -> dict[str, ModelSpec]:
    return {i: ModelSpec(model_id=i, memory_mb=1000, tpot_slo_ms=50) for i in ids}


def view(
    *,
    models: dict[str, ModelSpec] | None = None,
    nodes: list[NodeState] | None = None,
    instances: list[InstanceRecord] | None = None,
    plans: list[tuple[Plan, int]] | None = None,
) -> ClusterView:
    return ClusterView(
        models=specs(MODEL) if models is None else models,
        nodes={n.node: n for n in (nodes if nodes is not None else [a100("n1"), a100("n2")])},
        instances={r.instance_id: r for r in instances or []},
        plans={p.model_id: PlanEntry(p, rev) for p, rev in plans or []},
    )


def counter_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}{next(counter)}"


def decide(
    v: ClusterView, event: Event, *, now: float = NOW, memory: Memory | None = None
) -> Outcome:
    return on_event(v, memory or Memory(), event, now, policy=POLICY, ids=counter_ids())


def demand(model: str = MODEL, *, at: float = NOW, trace: str = "t" * 32) -> Demand:
    return Demand(model_id=model, trace_id=trace, time=at)


def of_type(outcome: Outcome, kind: type) -> list:
    return [e for e in outcome.effects if isinstance(e, kind)]


def events(outcome: Outcome) -> list[Event]:
    return [e.event for e in of_type(outcome, PublishEvent)]


def instance(
    instance_id: str, model: str = MODEL, state: str = "ready", node: str = "n1"
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        model_id=model,
        node=node,
        gpu_index=0,
        profile="7g.40gb",
        start=0,
        state=state,  # type: ignore[arg-type]
    )


def planned(v: ClusterView | None = None) -> tuple[Plan, Outcome]:
    """The plan a demand makes on ``v`` (two empty nodes by default)."""
    out = decide(v or view(), demand())
    [put] = of_type(out, PutPlan)
    return put.plan, out


# Demand -------------------------------------------------------------------------
def test_demand_makes_one_plan_with_trace_command_and_event_in_order() -> None:
    plan, out = planned()
    assert [type(e) for e in out.effects] == [PutPlan, PublishEvent, SendCommand]
    put, pub, send = out.effects
    assert isinstance(put, PutPlan) and put.expected_revision is None
    assert plan.status == "running" and plan.action == "create" and plan.trace_id == "t" * 32
    [step] = plan.steps
    assert (step.node, step.gpu_index, step.profile, step.start) == ("n1", 0, "1g.5gb", 6)
    assert isinstance(pub, PublishEvent) and isinstance(pub.event, ScaleDecided)
    assert pub.event.trace_id == plan.trace_id and pub.event.plan_id == plan.plan_id
    assert (pub.event.node, pub.event.profile, pub.event.instance_id) == (
        "n1",
        "1g.5gb",
        step.instance_id,
    )
    assert isinstance(send, SendCommand) and send.node == "n1"
    cmd = send.command
    assert isinstance(cmd, CreateInstance)
    assert (cmd.command_id, cmd.instance_id, cmd.plan_id, cmd.trace_id) == (
        step.command_id,
        step.instance_id,
        plan.plan_id,
        plan.trace_id,
    )
    assert cmd.model.model_id == MODEL and (cmd.profile, cmd.start) == ("1g.5gb", 6)
    assert out.memory.sent == {step.command_id: NOW}


@pytest.mark.parametrize(
    ("name", "the_view"),
    [
        ("ready instance", view(instances=[instance("i1")])),
        ("starting instance", view(instances=[instance("i1", state="starting")])),
        (
            "plan in flight",
            view(
                plans=[(Plan(plan_id="p0", model_id=MODEL, action="create", status="running"), 3)]
            ),
        ),
        ("plan pending", view(plans=[(Plan(plan_id="p0", model_id=MODEL, action="create"), 3)])),
        (
            "plan failed moments ago (backoff)",
            view(
                plans=[
                    (
                        Plan(
                            plan_id="p0",
                            model_id=MODEL,
                            action="create",
                            status="failed",
                            updated=NOW - 1,
                        ),
                        3,
                    )
                ]
            ),
        ),
    ],
)
def test_demand_makes_no_plan(name: str, the_view: ClusterView) -> None:
    out = decide(the_view, demand())
    assert out.effects == (), name
    assert out.notes, "every no-op says why"


def test_duplicate_demand_after_the_plan_is_in_the_view_is_a_no_op() -> None:
    plan, _ = planned()
    again = decide(view(plans=[(plan, 7)]), demand())
    assert again.effects == ()


def test_demand_after_backoff_replaces_the_failed_plan_at_its_revision() -> None:
    failed = Plan(plan_id="p0", model_id=MODEL, action="create", status="failed", updated=NOW - 6)
    plan, out = planned(view(plans=[(failed, 9)]))
    [put] = of_type(out, PutPlan)
    assert put.expected_revision == 9 and plan.plan_id != "p0"


def test_stale_demand_is_ignored() -> None:
    out = decide(view(), demand(at=NOW - POLICY.demand_max_age_s - 1))
    assert out.effects == ()


def test_draining_instance_does_not_count_as_live() -> None:
    plan, _ = planned(view(instances=[instance("old", state="draining", node="n1")]))
    # the draining instance still holds its 7g slice on n1
    assert plan.steps[0].node == "n2"


def test_unknown_model_fails_once_per_minute() -> None:
    v = view(models={})
    first = decide(v, demand())
    [evt] = events(first)
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.UNKNOWN_MODEL
    assert evt.trace_id == "t" * 32 and not of_type(first, PutPlan)
    soon = decide(v, demand(at=NOW + 30), now=NOW + 30, memory=first.memory)
    assert soon.effects == ()
    later = decide(v, demand(at=NOW + 61), now=NOW + 61, memory=first.memory)
    assert [e.code for e in events(later)] == [ErrorCode.UNKNOWN_MODEL]
    other = decide(v, demand(OTHER, at=NOW + 30), now=NOW + 30, memory=first.memory)
    assert len(events(other)) == 1


def test_no_capacity_fails_with_reason_rate_limited() -> None:
    v = view(nodes=[a100("n1", full=True), a100("n2", full=True)])
    first = decide(v, demand())
    [evt] = events(first)
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.NO_CAPACITY
    assert "n1/gpu0" in evt.reason and "n2/gpu0" in evt.reason
    assert decide(v, demand(), now=NOW + 10, memory=first.memory).effects == ()


def test_full_gpu_sends_to_other_node() -> None:
    plan, out = planned(view(nodes=[a100("n1", full=True), a100("n2")]))
    assert plan.steps[0].node == "n2"
    assert of_type(out, SendCommand)[0].node == "n2"


def test_slices_reserved_by_another_models_plan_count() -> None:
    step = PlanStep(
        op="create", command_id="c0", instance_id="i0", node="n1", profile="7g.40gb", status="sent"
    )
    other = Plan(plan_id="p1", model_id=OTHER, action="create", status="running", steps=[step])
    plan, _ = planned(view(models=specs(MODEL, OTHER), plans=[(other, 2)]))
    assert plan.steps[0].node == "n2"


def test_unknown_profile_bound_fails_with_bad_request() -> None:
    bad = {MODEL: ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=5, min_profile="9g")}
    [evt] = events(decide(view(models=bad), demand()))
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.BAD_REQUEST


# Step results -------------------------------------------------------------------
@pytest.mark.parametrize("result", ["command.done", "instance.ready"])
def test_step_result_finishes_the_plan(result: str) -> None:
    plan, _ = planned()
    step = plan.steps[0]
    evt: Event = (
        CommandDone(command_id=step.command_id, node="n1", instance_id=step.instance_id)
        if result == "command.done"
        else InstanceReady(instance_id=step.instance_id, model_id=MODEL, node="n1")
    )
    out = decide(view(plans=[(plan, 4)]), evt, now=NOW + 3)
    [put] = of_type(out, PutPlan)
    assert put.expected_revision == 4
    assert put.plan.status == "done" and put.plan.steps[0].status == "done"
    assert put.plan.updated == NOW + 3
    assert not events(out) and step.command_id not in out.memory.sent


def test_result_of_an_unknown_command_does_nothing() -> None:
    plan, _ = planned()
    out = decide(view(plans=[(plan, 4)]), CommandDone(command_id="other", node="n1"))
    assert out.effects == ()


def test_done_plan_ignores_later_results() -> None:
    plan, _ = planned()
    done = msgspec.structs.replace(plan, status="done")
    out = decide(
        view(plans=[(done, 5)]), CommandFailed(command_id=plan.steps[0].command_id, node="n1")
    )
    assert out.effects == ()


@pytest.mark.parametrize("result", ["command.failed", "instance.failed"])
def test_step_failure_fails_the_plan_with_reason_and_trace(result: str) -> None:
    plan, _ = planned()
    step = plan.steps[0]
    evt: Event = (
        CommandFailed(
            command_id=step.command_id,
            node="n1",
            code=ErrorCode.INSUFFICIENT_RESOURCES,
            reason="slice taken",
        )
        if result == "command.failed"
        else InstanceFailed(
            instance_id=step.instance_id,
            model_id=MODEL,
            node="n1",
            code=ErrorCode.INSUFFICIENT_RESOURCES,
            reason="slice taken",
        )
    )
    out = decide(view(plans=[(plan, 4)]), evt)
    [put] = of_type(out, PutPlan)
    assert put.plan.status == "failed" and put.plan.steps[0].status == "failed"
    [failed] = events(out)
    assert isinstance(failed, ScaleFailed)
    assert failed.code is ErrorCode.INSUFFICIENT_RESOURCES and "slice taken" in failed.reason
    assert failed.plan_id == plan.plan_id and failed.trace_id == plan.trace_id


def test_events_that_only_change_the_view_decide_nothing() -> None:
    evt = InstanceStarting(instance_id="i9", model_id=MODEL, node="n1")
    assert decide(view(), evt).effects == ()


# Ticks -----------------------------------------------------------------------------
def tick(v: ClusterView, now: float, memory: Memory | None = None) -> Outcome:
    return on_tick(v, memory or Memory(), now, policy=POLICY)


def test_plan_times_out() -> None:
    plan, out = planned()
    v = view(plans=[(plan, 4)])
    assert of_type(tick(v, NOW + 179, out.memory), PutPlan) == []
    late = tick(v, NOW + 181, out.memory)
    [put] = of_type(late, PutPlan)
    assert "180 s" in put.plan.reason
    [evt] = events(late)
    assert isinstance(evt, ScaleFailed) and evt.code is ErrorCode.TIMEOUT
    assert evt.trace_id == plan.trace_id
    # the instance may exist after all: the plan is rolled back by retiring it
    assert put.plan.status == "running" and put.plan.steps[0].status == "failed"
    [undo] = put.plan.steps[1:]
    assert undo.rollback and undo.op == "retire" and undo.instance_id == plan.steps[0].instance_id
    [send] = of_type(late, SendCommand)
    assert send.command.command_id == undo.command_id and "rolling back" in evt.reason


def test_tick_resends_a_command_without_result() -> None:
    plan, out = planned()
    v = view(plans=[(plan, 4)])
    assert tick(v, NOW + 10, out.memory).effects == ()
    again = tick(v, NOW + 16, out.memory)
    [send] = of_type(again, SendCommand)
    assert send.command.command_id == plan.steps[0].command_id
    assert again.memory.sent[send.command.command_id] == NOW + 16
    assert tick(v, NOW + 20, again.memory).effects == ()


def test_tick_finishes_a_plan_whose_instance_is_ready_in_kv() -> None:
    plan, _ = planned()
    rec = instance(plan.steps[0].instance_id, state="ready")
    [put] = of_type(tick(view(plans=[(plan, 4)], instances=[rec]), NOW + 1), PutPlan)
    assert put.plan.status == "done"


def test_recently_done_plan_counts_as_an_instance_until_the_record_arrives() -> None:
    plan, _ = planned()
    done = msgspec.structs.replace(plan, status="done", updated=NOW)
    v = view(plans=[(done, 5)])
    assert decide(v, demand(at=NOW + 1), now=NOW + 1).effects == ()
    later = decide(v, demand(at=NOW + 31), now=NOW + 31)
    assert of_type(later, PutPlan)


def test_policy_rejects_negative_times() -> None:
    with pytest.raises(ValueError, match="plan_timeout_s"):
        Policy(plan_timeout_s=-1)
