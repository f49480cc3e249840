"""Moves that make room (core/defrag.py): hand-made layouts with known answers."""

from __future__ import annotations

import pytest
from migserve_scaler.core.defrag import Move, MovePlan, plan_moves
from migserve_scaler.core.placement import NoCapacity, Placement, Reservation, choose_placement
from migserve_shared import mig
from migserve_shared.messages import (
    GpuState,
    InstanceRecord,
    InstanceState,
    ModelSpec,
    NodeState,
    SliceState,
)

A100 = "A100-SXM4-40GB"
H100 = "H100-80GB"

#: (profile, start, owner): owner "ready"/"starting"/"draining" makes an instance record,
#: "nobody" a slice only the node reports
Spec = tuple[str, int, str]


def gpu(index: int, *slices: Spec, model: str = A100) -> GpuState:
    m = mig.gpu_model(model)
    return GpuState(
        index=index,
        uuid=f"GPU-{index}",
        model=model,
        slices=[
            SliceState(gi_id=i, profile_id=m.profile(name).id, profile=name, start=start)
            for i, (name, start, _) in enumerate(slices)
        ],
    )


def cluster(
    *gpus: tuple[str, GpuState, tuple[Spec, ...]],
) -> tuple[list[NodeState], list[InstanceRecord], dict[tuple[str, int], list[Reservation]]]:
    """(node, GPU, its slices) -> nodes, instance records and reservations, as the core has them."""
    nodes: dict[str, list[GpuState]] = {}
    instances: list[InstanceRecord] = []
    reserved: dict[tuple[str, int], list[Reservation]] = {}
    for node, g, slices in gpus:
        nodes.setdefault(node, []).append(g)
        for name, start, owner in slices:
            if owner == "nobody":
                continue
            state: InstanceState = owner  # type: ignore[assignment]
            instances.append(
                InstanceRecord(
                    instance_id=f"{node}-{g.index}-{start}",
                    model_id=f"org/{name}",
                    node=node,
                    gpu_index=g.index,
                    profile=name,
                    start=start,
                    state=state,
                )
            )
            res = Reservation(node, g.index, name, start)
            reserved.setdefault((node, g.index), []).append(res)
    return [NodeState(node=n, gpus=gs) for n, gs in nodes.items()], instances, reserved


def on(
    node: str, index: int, *slices: Spec, model: str = A100
) -> tuple[str, GpuState, tuple[Spec, ...]]:
    return node, gpu(index, *slices, model=model), slices


def want(lo: str, memory_mb: int = 1000) -> ModelSpec:
    return ModelSpec(model_id="org/new", memory_mb=memory_mb, tpot_slo_ms=50, min_profile=lo)


def moves_of(plan: MovePlan) -> list[tuple[str, int, int, str, int, int]]:
    return [
        (m.from_node, m.from_gpu_index, m.from_start, m.node, m.gpu_index, m.start)
        for m in plan.moves
    ]


def test_fits_already_is_a_plan_without_moves_at_choose_placements_place() -> None:
    nodes, instances, reserved = cluster(
        on("n1", 0, ("3g.20gb", 0, "ready")), on("n2", 0, ("1g.5gb", 6, "ready"))
    )
    for spec in (want("1g.5gb"), want("2g.10gb"), want("3g.20gb"), want("4g.20gb")):
        plan = plan_moves(spec, nodes, instances, reserved)
        assert isinstance(plan, MovePlan)
        assert plan.moves == ()
        assert plan.target == choose_placement(spec, nodes, reserved)


def test_move_within_the_gpu_make_before_break() -> None:
    """1g at 0 keeps 4g out; it moves to 4..6 on the same GPU while it still runs at 0."""
    nodes, instances, reserved = cluster(on("n1", 0, ("1g.5gb", 0, "ready")))
    plan = plan_moves(want("4g.20gb"), nodes, instances, reserved, max_moves=1)
    assert isinstance(plan, MovePlan), plan
    (move,) = plan.moves
    assert (move.from_node, move.from_gpu_index, move.from_start) == ("n1", 0, 0)
    assert (move.node, move.gpu_index) == ("n1", 0)
    assert move.start in (4, 5, 6)
    assert move == Move("n1-0-0", "org/1g.5gb", "n1", 0, "1g.5gb", move.start, "n1", 0, 0)
    assert (plan.target.profile, plan.target.start) == ("4g.20gb", 0)


@pytest.mark.parametrize("owner", ["starting", "draining", "nobody"])
def test_only_ready_instances_move(owner: str) -> None:
    nodes, instances, reserved = cluster(on("n1", 0, ("1g.5gb", 0, owner)))
    got = plan_moves(want("4g.20gb"), nodes, instances, reserved)
    assert isinstance(got, NoCapacity), got
    assert "even after 2 make-before-break moves" in got.reason


def test_reserved_slices_of_plans_in_flight_never_move() -> None:
    nodes, instances, _ = cluster(on("n1", 0), on("n2", 0))
    reserved = {("n1", 0): [Reservation("n1", 0, "1g.5gb", 0)]}
    got = plan_moves(want("7g.40gb"), nodes, instances, reserved)
    assert isinstance(got, MovePlan)
    assert got.moves == () and (got.target.node, got.target.profile) == ("n2", "7g.40gb")
    reserved[("n2", 0)] = [Reservation("n2", 0, "1g.5gb", 6)]
    assert isinstance(plan_moves(want("7g.40gb"), nodes, instances, reserved), NoCapacity)


def test_two_moves_to_another_gpu_and_the_bound_is_kept() -> None:
    nodes, instances, reserved = cluster(
        on("n1", 0, ("1g.5gb", 0, "ready"), ("1g.5gb", 2, "ready"), ("3g.20gb", 4, "nobody")),
        on("n2", 0, ("4g.20gb", 0, "nobody")),
    )
    plan = plan_moves(want("4g.20gb"), nodes, instances, reserved)
    assert isinstance(plan, MovePlan), plan
    assert sorted(m.from_start for m in plan.moves) == [0, 2]
    assert {(m.node, m.gpu_index) for m in plan.moves} == {("n2", 0)}
    assert (plan.target.node, plan.target.profile, plan.target.start) == ("n1", "4g.20gb", 0)
    assert isinstance(
        plan_moves(want("4g.20gb"), nodes, instances, reserved, max_moves=1), NoCapacity
    )


def test_chain_move_frees_a_place_for_the_blocker() -> None:
    """The 2g blocking 4g on n1 fits nowhere; moving a 1g off n2 first opens 2g at 4 there."""
    nodes, instances, reserved = cluster(
        on("n1", 0, ("2g.10gb", 0, "ready"), ("3g.20gb", 4, "nobody")),
        on("n2", 0, ("3g.20gb", 0, "nobody"), ("1g.5gb", 4, "ready"), ("1g.5gb", 6, "nobody")),
        on("n3", 0, ("4g.20gb", 0, "nobody"), ("2g.10gb", 4, "nobody")),
    )
    assert isinstance(
        plan_moves(want("4g.20gb"), nodes, instances, reserved, max_moves=1), NoCapacity
    )
    plan = plan_moves(want("4g.20gb"), nodes, instances, reserved)
    assert isinstance(plan, MovePlan), plan
    assert moves_of(plan) == [("n2", 0, 4, "n3", 0, 6), ("n1", 0, 0, "n2", 0, 4)]
    assert (plan.target.node, plan.target.profile, plan.target.start) == ("n1", "4g.20gb", 0)


@pytest.mark.parametrize(("other", "moves"), [(A100, 1), (H100, None)])
def test_moves_stay_on_gpus_of_the_same_model(other: str, moves: int | None) -> None:
    """The 1g blocking 4g on n1 can only go to n2, which has room for a 1g but not a 4g."""
    four_g = "4g.20gb" if other == A100 else "4g.40gb"
    nodes, instances, reserved = cluster(
        on("n1", 0, ("1g.5gb", 0, "ready"), ("3g.20gb", 4, "nobody")),
        on("n2", 0, (four_g, 0, "nobody"), model=other),
    )
    got = plan_moves(want("4g.20gb"), nodes, instances, reserved)
    if moves is None:
        assert isinstance(got, NoCapacity), got
    else:
        assert isinstance(got, MovePlan), got
        assert moves_of(got) == [("n1", 0, 0, "n2", 0, 6)]


def test_fewest_moves_win_over_a_better_score() -> None:
    """n1 needs one move for 4g, n2 two; n1's plan wins."""
    nodes, instances, reserved = cluster(
        on("n1", 0, ("1g.5gb", 0, "ready"), ("1g.5gb", 4, "nobody")),
        on("n2", 0, ("1g.5gb", 0, "ready"), ("1g.5gb", 1, "ready")),
    )
    plan = plan_moves(want("4g.20gb"), nodes, instances, reserved)
    assert isinstance(plan, MovePlan), plan
    assert len(plan.moves) == 1
    assert plan.target.node == "n1"


def test_asked_profile_instead_of_the_smallest() -> None:
    spec = ModelSpec(model_id="org/new", memory_mb=1000, tpot_slo_ms=50)
    alone = cluster(on("n1", 0, ("1g.5gb", 4, "ready")))
    plan = plan_moves(spec, *alone, profile="3g.20gb")
    assert isinstance(plan, MovePlan)
    assert (plan.target.profile, plan.target.start, plan.moves) == ("3g.20gb", 0, ())
    assert isinstance(plan_moves(spec, *alone, profile="7g.40gb"), NoCapacity)
    assert isinstance(plan_moves(spec, *alone, profile="7g.80gb"), NoCapacity)  # not an A100-40GB
    two = cluster(on("n1", 0, ("1g.5gb", 4, "ready")), on("n2", 0, ("3g.20gb", 0, "nobody")))
    plan = plan_moves(spec, *two, profile="7g.40gb")
    assert isinstance(plan, MovePlan), plan
    assert moves_of(plan) == [("n1", 0, 4, "n2", 0, 6)]
    assert (plan.target.node, plan.target.profile) == ("n1", "7g.40gb")


def test_without_moves_allowed_it_answers_like_choose_placement() -> None:
    nodes, instances, reserved = cluster(on("n1", 0, ("1g.5gb", 0, "ready")))
    assert isinstance(
        plan_moves(want("4g.20gb"), nodes, instances, reserved, max_moves=0), NoCapacity
    )
    assert isinstance(choose_placement(want("4g.20gb"), nodes, reserved), NoCapacity)
    got = plan_moves(want("3g.20gb"), nodes, instances, reserved, max_moves=0)
    assert isinstance(got, MovePlan)
    assert isinstance(choose_placement(want("3g.20gb"), nodes, reserved), Placement)
    assert got.target == choose_placement(want("3g.20gb"), nodes, reserved)
