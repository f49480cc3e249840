"""Table-driven tests of the MIG placement rules (shared/migserve_shared/mig.py).

The tables restate NVIDIA's MIG User Guide ("Supported MIG Profiles") for each
GPU model, so a change to mig.py that breaks a rule fails here.
"""

from __future__ import annotations

import pytest
from migserve_shared import mig
from migserve_shared.errors import InsufficientResourcesError, NotSupportedError
from migserve_shared.mig import GpuModel, Slice

MODELS = ("A100-SXM4-40GB", "A100-80GB", "H100-80GB", "H200-141GB")

# profile names per model, in the order: 1g, 1g+me, 1g 2-memory, 2g, 3g, 4g, 7g
NAMES: dict[str, tuple[str, ...]] = {
    "A100-SXM4-40GB": (
        "1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb",
    ),
    "A100-80GB": (
        "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
    ),
    "H100-80GB": (
        "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
    ),
    "H200-141GB": (
        "1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb",
    ),
}  # fmt: skip

# (NVML profile id, compute slices, memory slices, max count, allowed starts), same order
RULES: tuple[tuple[int, int, int, int, tuple[int, ...]], ...] = (
    (19, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
    (20, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
    (15, 1, 2, 4, (0, 2, 4, 6)),
    (14, 2, 2, 3, (0, 2, 4)),
    (9, 3, 4, 2, (0, 4)),
    (5, 4, 4, 1, (0,)),
    (0, 7, 8, 1, (0,)),
)

PROFILE_CASES = [
    pytest.param(model, name, rule, id=f"{model}-{name}")
    for model in MODELS
    for name, rule in zip(NAMES[model], RULES, strict=True)
]
Rule = tuple[int, int, int, int, tuple[int, ...]]


def _model(name: str) -> GpuModel:
    return mig.gpu_model(name)


def _layout(model: GpuModel, *placed: tuple[str, int]) -> list[Slice]:
    return [Slice(model.profile(name).id, start) for name, start in placed]


def _n(model: GpuModel, k: int) -> str:
    """The k-th profile name of ``model`` in the NAMES order."""
    return NAMES[model.name][k]


ONE_G, ONE_G_ME, ONE_G_2MEM, TWO_G, THREE_G, FOUR_G, SEVEN_G = range(7)


@pytest.mark.parametrize(("model_name", "name", "rule"), PROFILE_CASES)
def test_profile_table(model_name: str, name: str, rule: Rule) -> None:
    pid, compute, memory, max_count, starts = rule
    model = _model(model_name)
    p = model.profile(name)
    assert (p.id, p.compute_slices, p.memory_slices, p.max_count, p.starts) == (
        pid, compute, memory, max_count, starts,
    )  # fmt: skip
    assert model.profile(pid) is p
    assert p.memory_mb > 0
    assert p.sm_count > 0
    # every allowed start fits on an empty GPU, every other start is refused
    for start in range(mig.MEMORY_SLICES):
        reason = mig.placement_error(model, [], p, start)
        assert (reason is None) == (start in starts), (name, start, reason)
    assert mig.free_starts(model, [], p) == list(starts)


@pytest.mark.parametrize(("model_name", "name", "rule"), PROFILE_CASES)
def test_max_count_is_reachable_and_not_exceeded(model_name: str, name: str, rule: Rule) -> None:
    pid, _, _, max_count, starts = rule
    model = _model(model_name)
    p = model.profile(name)
    placed: list[Slice] = []
    for _ in range(max_count):
        free = mig.free_starts(model, placed, p)
        assert free, f"only {len(placed)} of {max_count} {name} fit"
        mig.check_place(model, placed, p, free[0])
        placed.append(Slice(pid, free[0]))
    mig.validate_layout(model, placed)
    assert mig.free_starts(model, placed, p) == []
    for start in starts:
        assert mig.placement_error(model, placed, p, start) is not None


@pytest.mark.parametrize("model_name", MODELS)
def test_profiles_have_one_size_order(model_name: str) -> None:
    model = _model(model_name)
    assert len(model.profiles) == 7
    assert tuple(p.name for p in model.profiles) == NAMES[model_name]
    sizes = model.by_size()
    assert all(not p.name.endswith("+me") for p in sizes)
    assert sizes[-1].compute_slices == 7
    memory = [p.memory_mb for p in sizes]
    assert memory == sorted(memory)
    # nominal memory grows with memory slices; SMs grow with compute slices
    for a in model.profiles:
        for b in model.profiles:
            if a.memory_slices < b.memory_slices:
                assert a.memory_mb < b.memory_mb
            if a.compute_slices < b.compute_slices:
                assert a.sm_count < b.sm_count
    assert model.profile(_n(model, SEVEN_G)).memory_mb <= model.memory_mb


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("which", [ONE_G, ONE_G_ME])
def test_one_memory_slice_profiles_never_use_slice_7(model_name: str, which: int) -> None:
    model = _model(model_name)
    p = model.profile(_n(model, which))
    assert 7 not in p.starts
    reason = mig.placement_error(model, [], p, 7)
    assert reason is not None and "cannot start at memory slice 7" in reason
    with pytest.raises(InsufficientResourcesError, match="cannot start"):
        mig.check_place(model, [], p, 7)


ALL_1G = tuple((ONE_G, s) for s in range(7))
ALL_1G_2MEM = tuple((ONE_G_2MEM, s) for s in (0, 2, 4, 6))

# (what, layout as (profile index, start) pairs, valid?)
LAYOUTS: list[tuple[str, tuple[tuple[int, int], ...], bool]] = [
    ("4g@0 + 3g@4", ((FOUR_G, 0), (THREE_G, 4)), True),
    ("3g@0 + 3g@4 (one compute slice idle)", ((THREE_G, 0), (THREE_G, 4)), True),
    ("7 x 1g", ALL_1G, True),
    ("8 x 1g", (*ALL_1G, (ONE_G, 6)), False),
    ("2g+2g+2g+1g@6", ((TWO_G, 0), (TWO_G, 2), (TWO_G, 4), (ONE_G, 6)), True),
    ("2g+2g+2g+1g(2 mem)@6", ((TWO_G, 0), (TWO_G, 2), (TWO_G, 4), (ONE_G_2MEM, 6)), True),
    ("3g@0 + 2g@4 + 1g@6", ((THREE_G, 0), (TWO_G, 4), (ONE_G, 6)), True),
    ("4g@0 + 2g@4 + 1g@6", ((FOUR_G, 0), (TWO_G, 4), (ONE_G, 6)), True),
    ("4g@0 + 2g@4 + 1g@5 (overlap)", ((FOUR_G, 0), (TWO_G, 4), (ONE_G, 5)), False),
    ("7g alone", ((SEVEN_G, 0),), True),
    ("7g + 1g", ((SEVEN_G, 0), (ONE_G, 0)), False),
    ("1g + 7g", ((ONE_G, 6), (SEVEN_G, 0)), False),
    ("two 4g", ((FOUR_G, 0), (FOUR_G, 0)), False),
    ("three 3g", ((THREE_G, 0), (THREE_G, 4), (THREE_G, 4)), False),
    ("four 2g", ((TWO_G, 0), (TWO_G, 2), (TWO_G, 4), (TWO_G, 4)), False),
    ("4g@0 + 1g@3 (overlap)", ((FOUR_G, 0), (ONE_G, 3)), False),
    ("3g@4 + 2g@4 (overlap)", ((THREE_G, 4), (TWO_G, 4)), False),
    ("2g@2 + 1g(2 mem)@2 (overlap)", ((TWO_G, 2), (ONE_G_2MEM, 2)), False),
    ("3g@0 + 3g@4 + 1g@3 (overlap)", ((THREE_G, 0), (THREE_G, 4), (ONE_G, 3)), False),
    ("+me once", ((ONE_G_ME, 0),), True),
    ("+me twice", ((ONE_G_ME, 0), (ONE_G_ME, 1)), False),
    ("+me with six 1g", ((ONE_G_ME, 0), *((ONE_G, s) for s in range(1, 7))), True),
    ("four 1g(2 mem)", ALL_1G_2MEM, True),
    ("four 1g(2 mem) + 1g (memory full)", (*ALL_1G_2MEM, (ONE_G, 1)), False),
    ("five 1g(2 mem)", (*ALL_1G_2MEM, (ONE_G_2MEM, 0)), False),
    ("2g@0 + 2g@2 + 3g@4", ((TWO_G, 0), (TWO_G, 2), (THREE_G, 4)), True),
    ("4g@0 + 1g(2 mem)@4 + 1g(2 mem)@6", ((FOUR_G, 0), (ONE_G_2MEM, 4), (ONE_G_2MEM, 6)), True),
    ("3g@0 + 1g@4 + 1g@5 + 1g@6", ((THREE_G, 0), (ONE_G, 4), (ONE_G, 5), (ONE_G, 6)), True),
    ("2g@1 (bad start)", ((TWO_G, 1),), False),
    ("3g@2 (bad start)", ((THREE_G, 2),), False),
    ("4g@4 (bad start)", ((FOUR_G, 4),), False),
    ("7g@1 (bad start)", ((SEVEN_G, 1),), False),
    ("1g(2 mem)@1 (bad start)", ((ONE_G_2MEM, 1),), False),
    ("1g@7 (bad start)", ((ONE_G, 7),), False),
]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(("what", "layout", "valid"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_layouts(
    model_name: str, what: str, layout: tuple[tuple[int, int], ...], valid: bool
) -> None:
    model = _model(model_name)
    slices = _layout(model, *((_n(model, k), start) for k, start in layout))
    if valid:
        mig.validate_layout(model, slices)
    else:
        with pytest.raises(InsufficientResourcesError, match=model.name):
            mig.validate_layout(model, slices)


def _oracle_fits(model: GpuModel, layout: list[Slice], profile: mig.Profile, start: int) -> bool:
    """An independent restatement of the rules, slice by slice."""
    used: set[int] = set()
    compute = 0
    count = 0
    for s in layout:
        p = model.profile(s.profile_id)
        used |= set(range(s.start, s.start + p.memory_slices))
        compute += p.compute_slices
        count += p.id == profile.id
    wanted = set(range(start, start + profile.memory_slices))
    return (
        start in profile.starts
        and max(wanted) < mig.MEMORY_SLICES
        and not used & wanted
        and compute + profile.compute_slices <= mig.COMPUTE_SLICES
        and count < profile.max_count
    )


def _all_layouts(model: GpuModel) -> list[list[Slice]]:
    """Every valid layout, each once (slices added in increasing (start, id) order)."""
    out: list[list[Slice]] = []

    def grow(layout: list[Slice]) -> None:
        out.append(layout)
        last = (layout[-1].start, layout[-1].profile_id) if layout else (-1, -1)
        for p in model.profiles:
            for start in p.starts:
                if (start, p.id) > last and _oracle_fits(model, layout, p, start):
                    grow([*layout, Slice(p.id, start)])

    grow([])
    return out


@pytest.mark.parametrize("model_name", MODELS)
def test_rules_match_an_independent_oracle_on_every_layout(model_name: str) -> None:
    model = _model(model_name)
    layouts = _all_layouts(model)
    assert len(layouts) > 100
    for layout in layouts:
        mig.validate_layout(model, layout)
        compute = sum(model.profile(s.profile_id).compute_slices for s in layout)
        assert compute <= mig.COMPUTE_SLICES
        for p in model.profiles:
            expected = [st for st in p.starts if _oracle_fits(model, layout, p, st)]
            assert mig.free_starts(model, layout, p) == expected, (layout, p.name)
            for start in range(mig.MEMORY_SLICES):
                fits = mig.placement_error(model, layout, p, start) is None
                assert fits == _oracle_fits(model, layout, p, start), (layout, p.name, start)


@pytest.mark.parametrize("model_name", MODELS)
def test_full_layouts_use_at_most_seven_compute_slices(model_name: str) -> None:
    """3g+3g leaves one compute slice idle; 4g+3g, 2g+2g+2g+1g and 7 x 1g use all 7."""
    model = _model(model_name)
    for layout, idle in (
        (((THREE_G, 0), (THREE_G, 4)), 1),
        (((FOUR_G, 0), (THREE_G, 4)), 0),
        (((TWO_G, 0), (TWO_G, 2), (TWO_G, 4), (ONE_G, 6)), 0),
        (tuple((ONE_G, s) for s in range(7)), 0),
        (((SEVEN_G, 0),), 0),
    ):
        slices = _layout(model, *((_n(model, k), start) for k, start in layout))
        mig.validate_layout(model, slices)
        assert mig.capacity_score(model, slices)[1] == idle
        assert mig.placeable_profiles(model, slices) == []


def test_compute_limit_is_enforced_on_its_own() -> None:
    """No real profile set hits the compute limit with memory free (memory and starts
    imply it), so check the rule itself with a synthetic wide profile."""
    model = _model("A100-SXM4-40GB")
    wide = mig.Profile(99, "5g.x", 5, 2, 1, (6,), 1, 1, 0)
    model_wide = GpuModel("wide", ("wide",), 1, (*model.profiles, wide))
    base = _layout(model, ("4g.20gb", 0))
    assert mig.placement_error(model_wide, base, wide, 6) == (
        "5g.x needs 5 compute slices, 3 are free"
    )
    assert mig.free_starts(model_wide, base, wide) == []
    assert mig.placement_error(model_wide, _layout(model, ("2g.10gb", 0)), wide, 6) is None


def test_check_place_raises_with_the_reason() -> None:
    model = _model("A100-SXM4-40GB")
    layout = _layout(model, ("4g.20gb", 0))
    with pytest.raises(InsufficientResourcesError, match=r"A100-SXM4-40GB: 3g.20gb at 0 overlaps"):
        mig.check_place(model, layout, model.profile("3g.20gb"), 0)
    mig.check_place(model, [], model.profile("4g.20gb"), 0)
    with pytest.raises(InsufficientResourcesError, match="maximum count 1"):
        mig.check_place(model, _layout(model, ("1g.5gb+me", 6)), model.profile("1g.5gb+me"), 5)


# NVML device names as nvmlDeviceGetName reports them -> our model
ALIASES = [
    ("A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A100 40GB PCIe", "A100-SXM4-40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("A100-80GB", "A100-80GB"),
    ("NVIDIA H100 80GB HBM3", "H100-80GB"),
    ("NVIDIA H100 PCIe", "H100-80GB"),
    ("H100-80GB", "H100-80GB"),
    ("NVIDIA H200", "H200-141GB"),
    ("NVIDIA H200 NVL", "H200-141GB"),
    ("H200-141GB", "H200-141GB"),
    ("nvidia h100 80gb hbm3", "H100-80GB"),
]


@pytest.mark.parametrize(("nvml_name", "expected"), ALIASES)
def test_nvml_name_aliases(nvml_name: str, expected: str) -> None:
    assert mig.gpu_model(nvml_name).name == expected


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA GeForce RTX 4090",
        "Tesla T4",
        "NVIDIA L40S",
        "",
        # other MIG GPUs whose profiles differ: must not pass for a known model
        "NVIDIA GH200 480GB",
        "NVIDIA H100 NVL",
        "NVIDIA A30",
    ],
)
def test_unknown_gpu_is_not_supported(name: str) -> None:
    with pytest.raises(NotSupportedError, match="not MIG-capable or unknown"):
        mig.gpu_model(name)


@pytest.mark.parametrize("model_name", MODELS)
def test_unknown_profile_is_not_supported(model_name: str) -> None:
    model = _model(model_name)
    with pytest.raises(NotSupportedError, match=model.name):
        model.profile("5g.50gb")
    with pytest.raises(NotSupportedError):
        model.profile(42)


def test_same_name_means_different_profiles_on_different_gpus() -> None:
    """1g.10gb has 2 memory slices on an A100-40GB, 1 on an A100-80GB or H100."""
    assert _model("A100-SXM4-40GB").profile("1g.10gb").memory_slices == 2
    assert _model("A100-SXM4-40GB").profile("1g.10gb").id == 15
    assert _model("A100-80GB").profile("1g.10gb").memory_slices == 1
    assert _model("H100-80GB").profile("1g.10gb").id == 19


# capacity_score(layout) = (largest placeable compute, free compute, free memory)
SCORES: list[tuple[str, tuple[tuple[int, int], ...], tuple[int, int, int]]] = [
    ("empty", (), (7, 7, 8)),
    ("1g@0: no 4g any more", ((ONE_G, 0),), (3, 6, 7)),
    ("1g@6", ((ONE_G, 6),), (4, 6, 7)),
    ("1g@0 + 1g@4", ((ONE_G, 0), (ONE_G, 4)), (2, 5, 6)),
    ("3g@0", ((THREE_G, 0),), (3, 4, 4)),
    ("3g@4", ((THREE_G, 4),), (4, 4, 4)),
    ("4g@0", ((FOUR_G, 0),), (3, 3, 4)),
    ("2g@0", ((TWO_G, 0),), (3, 5, 6)),
    ("2g@4", ((TWO_G, 4),), (4, 5, 6)),
    ("7g", ((SEVEN_G, 0),), (0, 0, 0)),
    ("4g@0 + 3g@4", ((FOUR_G, 0), (THREE_G, 4)), (0, 0, 0)),
    ("3g@0 + 3g@4: one compute slice idle", ((THREE_G, 0), (THREE_G, 4)), (0, 1, 0)),
    ("7 x 1g: memory slice 7 free but unusable", tuple((ONE_G, s) for s in range(7)), (0, 0, 1)),
    ("4g@0 + 2g@4", ((FOUR_G, 0), (TWO_G, 4)), (1, 1, 2)),
]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(("what", "layout", "score"), SCORES, ids=[s[0] for s in SCORES])
def test_capacity_score(
    model_name: str, what: str, layout: tuple[tuple[int, int], ...], score: tuple[int, int, int]
) -> None:
    model = _model(model_name)
    slices = _layout(model, *((_n(model, k), start) for k, start in layout))
    assert mig.capacity_score(model, slices) == score


def test_capacity_score_prefers_the_placement_that_keeps_4g() -> None:
    """A 1g at 4..6 keeps the 4g placeable; at 0..3 it does not."""
    model = _model("A100-SXM4-40GB")
    one_g = model.profile("1g.5gb")
    scores = {start: mig.capacity_score(model, [Slice(one_g.id, start)]) for start in one_g.starts}
    best = max(scores.values())
    assert {s for s, v in scores.items() if v == best} == {4, 5, 6}
    assert scores[0] < best


# free_starts(profile) on a layout
FREE: list[tuple[str, tuple[tuple[int, int], ...], int, list[int]]] = [
    ("1g on empty", (), ONE_G, [0, 1, 2, 3, 4, 5, 6]),
    ("1g beside 4g", ((FOUR_G, 0),), ONE_G, [4, 5, 6]),
    ("3g beside 4g", ((FOUR_G, 0),), THREE_G, [4]),
    ("4g beside 3g@4", ((THREE_G, 4),), FOUR_G, [0]),
    ("4g beside 1g@0", ((ONE_G, 0),), FOUR_G, []),
    ("2g beside 1g@1", ((ONE_G, 1),), TWO_G, [2, 4]),
    ("1g(2 mem) beside 2g@0,2,4", ((TWO_G, 0), (TWO_G, 2), (TWO_G, 4)), ONE_G_2MEM, [6]),
    ("+me after +me", ((ONE_G_ME, 3),), ONE_G_ME, []),
    ("1g after +me", ((ONE_G_ME, 3),), ONE_G, [0, 1, 2, 4, 5, 6]),
    ("7g beside 1g", ((ONE_G, 6),), SEVEN_G, []),
    ("3g beside 3g@0 and 1g@4", ((THREE_G, 0), (ONE_G, 4)), THREE_G, []),
    ("1g beside 3g+3g", ((THREE_G, 0), (THREE_G, 4)), ONE_G, []),
]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(("what", "layout", "which", "starts"), FREE, ids=[f[0] for f in FREE])
def test_free_starts(
    model_name: str,
    what: str,
    layout: tuple[tuple[int, int], ...],
    which: int,
    starts: list[int],
) -> None:
    model = _model(model_name)
    slices = _layout(model, *((_n(model, k), start) for k, start in layout))
    profile = model.profile(_n(model, which))
    assert mig.free_starts(model, slices, profile) == starts
    for start in profile.starts:
        assert (mig.placement_error(model, slices, profile, start) is None) == (start in starts)


@pytest.mark.parametrize("model_name", MODELS)
def test_placeable_profiles(model_name: str) -> None:
    model = _model(model_name)
    assert [p.compute_slices for p in mig.placeable_profiles(model, [])] == [1, 1, 2, 3, 4, 7]
    layout = _layout(model, (_n(model, FOUR_G), 0), (_n(model, TWO_G), 4))
    assert [p.name for p in mig.placeable_profiles(model, layout)] == [
        _n(model, ONE_G),
        _n(model, ONE_G_2MEM),
    ]


def test_render_bar() -> None:
    model = _model("A100-SXM4-40GB")
    layout = _layout(model, ("3g.20gb", 0), ("2g.10gb", 4))
    bar = mig.render_bar(model, layout)
    assert bar.startswith("[3g.20gb")
    assert bar.count("|") == 3
    assert bar.count("·") == 2
    assert mig.render_bar(model, layout, {4: "mine"}).count("mine") == 1
