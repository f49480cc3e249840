"""The sim engine's performance model: parsing, anchoring, monotonicity, speed factor."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from migserve_agent.sim_engine.perf import (
    MigProfile,
    PerfModel,
    ProfileError,
    parse_profile,
)

# (name, compute slices, memory slices)
PROFILES = [
    ("1g.5gb", 1, 1),
    ("1g.5gb+me", 1, 1),
    ("1g.10gb", 1, 2),  # the A100-40GB two-memory-slice 1g profile
    ("2g.10gb", 2, 2),
    ("3g.20gb", 3, 4),
    ("4g.20gb", 4, 4),
    ("7g.40gb", 7, 8),
    ("1g.18gb", 1, 1),
    ("1g.18gb+me", 1, 1),
    ("1g.20gb", 1, 2),
    ("1g.35gb", 1, 2),
    ("2g.35gb", 2, 2),
    ("3g.40gb", 3, 4),
    ("4g.71gb", 4, 4),
    ("7g.80gb", 7, 8),
    ("7g.141gb", 7, 8),
]


@pytest.mark.parametrize(("name", "compute", "memory"), PROFILES)
def test_parse_profile(name: str, compute: int, memory: int) -> None:
    assert parse_profile(name) == MigProfile(name, compute, memory)


@pytest.mark.parametrize(
    ("name", "gpu_memory_gb", "memory"),
    [("1g.10gb", 40, 2), ("1g.10gb", 80, 1), ("1g.18gb", 141, 1), ("1g.35gb", 141, 2)],
)
def test_parse_1g_profile_with_gpu_memory(name: str, gpu_memory_gb: float, memory: int) -> None:
    assert parse_profile(name, gpu_memory_gb=gpu_memory_gb).memory_slices == memory


@pytest.mark.parametrize("name", ["", "3g", "g.20gb", "5g.20gb", "8g.40gb", "2g.10gb+me", "x"])
def test_parse_profile_rejects(name: str) -> None:
    with pytest.raises(ProfileError, match="profile"):
        parse_profile(name)


# Fitted on vLLM over A100-40GB MIG slices (FACTS.md): profile, weights vs 7B, alpha, beta
ANCHORS = [
    ("1g.10gb", 3 / 7, 21.6, 0.394),
    ("2g.10gb", 3 / 7, 21.9, 0.218),
    ("3g.20gb", 1.0, 23.4, 0.209),
    ("4g.20gb", 1.0, 23.3, 0.165),
    ("7g.40gb", 2.0, 24.8, 0.156),
]


@pytest.mark.parametrize(("name", "weights", "alpha", "beta"), ANCHORS)
def test_anchored_on_fitted_values(name: str, weights: float, alpha: float, beta: float) -> None:
    profile = parse_profile(name)
    model = PerfModel.for_profile(
        profile.compute_slices, profile.memory_slices, weights_scale=weights
    )
    assert model.alpha_ms == pytest.approx(alpha, rel=0.05)
    assert model.beta_ms == pytest.approx(beta, rel=0.15)
    for n in (1, 10, 50):
        assert model.tpot_ms(n) == pytest.approx(alpha + beta * n, rel=0.06)


def _model(profile: tuple[str, int, int]) -> PerfModel:
    return PerfModel.for_profile(profile[1], profile[2])


BIGGER = [
    (small, big)
    for small, big in itertools.permutations(PROFILES, 2)
    if big[1] >= small[1] and big[2] >= small[2]
]


def test_profiles_are_totally_ordered_by_size() -> None:
    # every pair of distinct sizes is comparable, so monotonicity covers all pairs
    sizes = {(c, m) for _, c, m in PROFILES}
    for a, b in itertools.combinations(sizes, 2):
        assert (a[0] <= b[0] and a[1] <= b[1]) or (a[0] >= b[0] and a[1] >= b[1])


@pytest.mark.parametrize(("small", "big"), BIGGER)
def test_bigger_profile_is_never_slower(
    small: tuple[str, int, int], big: tuple[str, int, int]
) -> None:
    slow, fast = _model(small), _model(big)
    for n in (0, 1, 2, 8, 32, 128, 512):
        assert fast.tpot_ms(n) <= slow.tpot_ms(n)
    for prompt in (0, 1, 100, 4000):
        assert fast.ttft_ms(prompt) <= slow.ttft_ms(prompt)


@pytest.mark.parametrize(("compute", "memory"), [(c, m) for _, c, m in PROFILES])
def test_tpot_grows_with_concurrency_and_ttft_with_prompt(compute: int, memory: int) -> None:
    model = PerfModel.for_profile(compute, memory)
    tpots = [model.tpot_ms(n) for n in range(1, 64)]
    assert tpots == sorted(tpots)
    assert tpots[-1] > tpots[0]
    assert model.tpot_ms(0) == model.tpot_ms(1)  # a lone request is N=1
    assert model.ttft_ms(1000) > model.ttft_ms(10) > 0


def test_speed_factor_scales_tpot_and_ttft() -> None:
    base = PerfModel.for_profile(3, 4)
    slow = base.with_speed_factor(2.5)
    assert slow.speed_factor == 2.5
    assert base.speed_factor == 1.0  # the original is unchanged
    for n in (1, 7, 40):
        assert slow.tpot_ms(n) == pytest.approx(2.5 * base.tpot_ms(n))
    assert slow.ttft_ms(300) == pytest.approx(2.5 * base.ttft_ms(300))
    assert PerfModel.for_profile(3, 4, speed_factor=0.5).tpot_ms(3) == pytest.approx(
        0.5 * base.tpot_ms(3)
    )


def test_overrides_replace_the_formulas() -> None:
    model = PerfModel.for_profile(1, 1, alpha_ms=1.0, beta_ms=0.5, prefill_ms_per_token=0.0)
    assert model.tpot_ms(4) == pytest.approx(3.0)
    assert model.ttft_ms(1000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"speed_factor": 0.0},
        {"speed_factor": -1.0},
        {"speed_factor": float("nan")},
        {"alpha_ms": -1.0},
        {"beta_ms": float("inf")},
        {"weights_scale": 0.0},
    ],
)
def test_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PerfModel.for_profile(2, 2, **kwargs)


@pytest.mark.parametrize(("compute", "memory"), [(0, 1), (8, 8), (1, 0), (1, 9)])
def test_rejects_bad_slice_counts(compute: int, memory: int) -> None:
    with pytest.raises(ProfileError, match="slices must be"):
        PerfModel.for_profile(compute, memory)
