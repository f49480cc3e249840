"""The remembered per-layout computations (core/layouts.py) agree with the MIG rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from migserve_scaler.core import layouts
from migserve_scaler.core.placement import Reservation, gpu_layout, used_slices
from migserve_shared import mig
from migserve_shared.messages import GpuState, SliceState


def all_layouts(model: mig.GpuModel) -> list[layouts.Layout]:
    """Every legal layout of ``model``, each once."""
    out: list[layouts.Layout] = []

    def grow(placed: list[mig.Slice]) -> None:
        out.append(frozenset((s.profile_id, s.start) for s in placed))
        last = (placed[-1].start, placed[-1].profile_id) if placed else (-1, -1)
        for p in model.profiles:
            for start in mig.free_starts(model, placed, p):
                if (start, p.id) > last:
                    grow([*placed, mig.Slice(p.id, start)])

    grow([])
    return out


@pytest.mark.parametrize("model", mig.GPU_MODELS, ids=lambda m: m.name)
def test_free_starts_and_rank_match_mig_on_every_layout(model: mig.GpuModel) -> None:
    every = all_layouts(model)
    assert len(every) > 100
    for layout in every:
        slices = layouts.layout_slices(layout)
        for p in model.profiles:
            assert layouts.layout_free_starts(model.name, layout, p.id) == tuple(
                mig.free_starts(model, slices, p)
            )
        rank = layouts.layout_rank(model.name, layout)
        assert rank[:3] == mig.capacity_score(model, slices), layout
        assert rank[3] == sum(len(mig.free_starts(model, slices, p)) for p in model.by_size())


@pytest.mark.parametrize("model", mig.GPU_MODELS, ids=lambda m: m.name)
def test_moves_needed_counts_the_slices_in_the_way(model: mig.GpuModel) -> None:
    one, three, four = (model.by_size()[i] for i in (0, 3, 4))
    layout = frozenset({(one.id, 0), (one.id, 2), (three.id, 4)})
    assert layouts.moves_needed(model.name, layout, frozenset({0, 2, 4}), four.id, 0) == 2
    assert layouts.moves_needed(model.name, layout, frozenset({0}), four.id, 0) is None
    assert layouts.moves_needed(model.name, layout, frozenset({0, 2}), one.id, 1) == 0
    # 3g at 0 and 4 leave one compute slice: a 1g needs one of them gone though memory is free
    full = frozenset({(three.id, 0), (three.id, 4)})
    assert layouts.moves_needed(model.name, full, frozenset({0, 4}), one.id, 0) == 1


NAMES = [p.name for p in mig.gpu_model("A100-SXM4-40GB").profiles] + ["9g.99gb"]


@settings(max_examples=60, deadline=None)
@given(
    reported=st.lists(st.tuples(st.sampled_from(NAMES[:-1]), st.integers(0, 7)), max_size=5),
    reserved=st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 7)), max_size=5),
)
def test_gpu_layout_is_used_slices(
    reported: list[tuple[str, int]], reserved: list[tuple[str, int]]
) -> None:
    model = mig.gpu_model("A100-SXM4-40GB")
    gpu = GpuState(
        index=0,
        uuid="GPU-0",
        model=model.name,
        slices=[
            SliceState(gi_id=i, profile_id=model.profile(n).id, profile=n, start=s)
            for i, (n, s) in enumerate(reported)
        ],
    )
    res = [Reservation("n", 0, n, s) for n, s in reserved]
    slices = used_slices(model, gpu, res)
    layout, count = gpu_layout(model, gpu, res)
    assert count == len(slices)
    assert layout == frozenset((s.profile_id, s.start) for s in slices)
