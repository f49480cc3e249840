"""Placement of a new slice: smallest profile that fits, GPUs in use first, fragmentation-aware."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from migserve_scaler.core.placement import (
    BadProfileBoundError,
    NoCapacity,
    Placement,
    Reservation,
    candidate_profiles,
    choose_placement,
)
from migserve_shared import mig
from migserve_shared.messages import GpuState, ModelSpec, NodeState, SliceState

A100 = "A100-SXM4-40GB"
H100 = "H100-80GB"


def gpu(
    index: int = 0, *slices: tuple[str, int], model: str = A100, mig_on: bool = True
) -> GpuState:
    return GpuState(
        index=index,
        uuid=f"GPU-{index}",
        model=model,
        mig_enabled=mig_on,
        slices=[
            SliceState(
                gi_id=i, profile_id=mig.gpu_model(model).profile(name).id, profile=name, start=start
            )
            for i, (name, start) in enumerate(slices)
        ],
    )


def node(name: str, *gpus: GpuState) -> NodeState:
    return NodeState(node=name, gpus=list(gpus) or [gpu()])


def spec(memory_mb: int, lo: str | None = None, hi: str | None = None) -> ModelSpec:
    return ModelSpec(
        model_id="org/m", memory_mb=memory_mb, tpot_slo_ms=50, min_profile=lo, max_profile=hi
    )


@dataclass
class Case:
    name: str
    nodes: list[NodeState]
    spec: ModelSpec
    #: (node, gpu index, profile, start)
    want: tuple[str, int, str, int]
    reserved: dict[tuple[str, int], list[Reservation]] = field(default_factory=dict)


TWO_EMPTY = [node("node-1"), node("node-2")]

CASES = [
    # 1g at 4, 5 or 6 keeps 4g placeable (score (4, 6, 7)); 6 leaves the most options open
    Case(
        "small model on empty cluster: 1g by score",
        TWO_EMPTY,
        spec(1000),
        ("node-1", 0, "1g.5gb", 6),
    ),
    Case("exactly the 1g memory fits 1g", TWO_EMPTY, spec(4864), ("node-1", 0, "1g.5gb", 6)),
    # 1g.10gb (2 memory slices, 1 compute) is smaller than 2g.10gb
    Case("just over 1g memory: 1g.10gb", TWO_EMPTY, spec(4865), ("node-1", 0, "1g.10gb", 6)),
    # 3g at 4 leaves 4g at 0 placeable; 3g at 0 only another 3g
    Case("15 GB model: 3g.20gb at 4", TWO_EMPTY, spec(15000), ("node-1", 0, "3g.20gb", 4)),
    Case("30 GB model: 7g", TWO_EMPTY, spec(30000), ("node-1", 0, "7g.40gb", 0)),
    Case("min_profile respected", TWO_EMPTY, spec(1000, lo="2g.10gb"), ("node-1", 0, "2g.10gb", 4)),
    Case(
        "min_profile by shape on H100",
        [node("h", gpu(model=H100))],
        spec(1000, lo="2g.10gb"),
        ("h", 0, "2g.20gb", 4),
    ),
    Case(
        "full GPU -> other node",
        [node("node-1", gpu(0, ("7g.40gb", 0))), node("node-2")],
        spec(1000),
        ("node-2", 0, "1g.5gb", 6),
    ),
    Case(
        "keep 4g placeable: avoid the GPU whose 4g is gone",
        [node("node-1", gpu(0, ("3g.20gb", 0))), node("node-2", gpu(0, ("1g.5gb", 6)))],
        spec(1000),
        ("node-2", 0, "1g.5gb", 4),
    ),
    # A100-80GB's 1g.10gb (9728 MB) is smaller than A100-40GB's 1g.10gb (9984 MB)
    Case(
        "smallest profile beats a better score elsewhere",
        [node("node-1", gpu(0, ("4g.40gb", 0), model="A100-80GB")), node("node-2")],
        spec(9000),
        ("node-1", 0, "1g.10gb", 6),
    ),
    # consolidation: a GPU already holding slices before an empty one, even at a worse score
    Case(
        "consolidate: the GPU in use beats an empty one",
        [node("node-1"), node("node-2", gpu(0, ("1g.5gb", 6)))],
        spec(1000),
        ("node-2", 0, "1g.5gb", 4),
    ),
    Case(
        "consolidate although the 4g is gone there",
        [node("node-1"), node("node-2", gpu(0, ("3g.20gb", 0)))],
        spec(1000),
        ("node-2", 0, "1g.5gb", 6),
    ),
    Case(
        "consolidate onto a GPU that only a plan reserved",
        TWO_EMPTY,
        spec(1000),
        ("node-2", 0, "1g.5gb", 4),
        reserved={("node-2", 0): [Reservation("node-2", 0, "1g.5gb", 6)]},
    ),
    Case(
        "among GPUs in use, the best score: keep 4g placeable",
        [
            node("node-1"),
            node("node-2", gpu(0, ("3g.20gb", 0))),
            node("node-3", gpu(0, ("1g.5gb", 6))),
        ],
        spec(1000),
        ("node-3", 0, "1g.5gb", 4),
    ),
    Case(
        "an empty GPU when no GPU in use has room",
        [node("node-1", gpu(0, ("4g.20gb", 0), ("3g.20gb", 4))), node("node-2")],
        spec(15000),
        ("node-2", 0, "3g.20gb", 4),
    ),
    Case(
        "second GPU of a node",
        [node("node-1", gpu(0, ("7g.40gb", 0)), gpu(1))],
        spec(1000),
        ("node-1", 1, "1g.5gb", 6),
    ),
    Case(
        "MIG-disabled GPU skipped",
        [node("node-1", gpu(0, mig_on=False), gpu(1))],
        spec(1000),
        ("node-1", 1, "1g.5gb", 6),
    ),
    Case(
        "slices reserved by a plan count as used",
        TWO_EMPTY,
        spec(1000),
        ("node-2", 0, "1g.5gb", 6),
        reserved={("node-1", 0): [Reservation("node-1", 0, "7g.40gb", 0)]},
    ),
    Case(
        "reservation at a reported start is not counted twice",
        [node("node-1", gpu(0, ("3g.20gb", 4))), node("node-2", gpu(0, ("4g.20gb", 0)))],
        spec(15000),
        ("node-1", 0, "3g.20gb", 0),
        reserved={("node-1", 0): [Reservation("node-1", 0, "3g.20gb", 4)]},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_choose_placement(case: Case) -> None:
    got = choose_placement(case.spec, case.nodes, case.reserved)
    assert isinstance(got, Placement), got
    assert (got.node, got.gpu_index, got.profile, got.start) == case.want


def test_chosen_start_has_the_best_capacity_score() -> None:
    model = mig.gpu_model(A100)
    p = model.profile("1g.5gb")
    scores = {s: mig.capacity_score(model, [mig.Slice(p.id, s)]) for s in p.starts}
    got = choose_placement(spec(1000), TWO_EMPTY, {})
    assert isinstance(got, Placement)
    assert got.score == max(scores.values()) == scores[got.start]


@pytest.mark.parametrize(
    ("nodes", "the_spec", "reserved", "must_mention"),
    [
        (
            [node("node-1", gpu(0, ("7g.40gb", 0))), node("node-2", gpu(0, ("7g.40gb", 0)))],
            spec(1000),
            {},
            ["at least 1000 MB", "node-1/gpu0", "node-2/gpu0", "overlaps"],
        ),
        (
            [node("node-1", gpu(0, ("3g.20gb", 0), ("3g.20gb", 4)))],
            spec(1000),
            {},
            ["node-1/gpu0", "1 of 7 compute slices free"],
        ),
        (TWO_EMPTY, spec(50000), {}, ["no profile within the model's bounds holds 50000 MB"]),
        (TWO_EMPTY, spec(15000, hi="2g.10gb"), {}, ["between any and 2g.10gb"]),
        ([node("node-1", gpu(0, mig_on=False))], spec(1000), {}, ["MIG is disabled"]),
        ([node("node-1", gpu(0, model="Tesla T4"))], spec(1000), {}, ["not MIG-capable"]),
        ([], spec(1000), {}, ["no node has reported any GPU"]),
        (
            TWO_EMPTY,
            spec(1000),
            {
                ("node-1", 0): [Reservation("node-1", 0, "7g.40gb", 0)],
                ("node-2", 0): [Reservation("node-2", 0, "7g.40gb", 0)],
            },
            ["node-1/gpu0", "node-2/gpu0"],
        ),
    ],
)
def test_no_capacity_says_which_gpus_and_why(
    nodes: list[NodeState],
    the_spec: ModelSpec,
    reserved: dict[tuple[str, int], list[Reservation]],
    must_mention: list[str],
) -> None:
    got = choose_placement(the_spec, nodes, reserved)
    assert isinstance(got, NoCapacity), got
    for text in must_mention:
        assert text in got.reason


def test_unknown_profile_bound_is_an_error() -> None:
    with pytest.raises(BadProfileBoundError, match=r"9g\.90gb"):
        choose_placement(spec(1000, lo="9g.90gb"), TWO_EMPTY, {})


def test_candidates_are_smallest_first_and_exclude_media_profiles() -> None:
    names = [p.name for p in candidate_profiles(mig.gpu_model(A100), spec(1))]
    assert names == ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
