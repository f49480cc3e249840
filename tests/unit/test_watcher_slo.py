"""The watcher's SLO state machine against recorded TPOT series (SLO 50 ms)."""

from __future__ import annotations

import itertools

import pytest
from migserve_shared.messages import SloEvidence
from migserve_watcher.core.slo import (
    SloDecision,
    SloPolicy,
    SloState,
    judge,
    policy_with_headroom,
    step,
)

SLO = 50.0
INTERVAL = 5.0
#: k=3, underload after 12, watermark 0.5, cooldown 60 s (12 windows), recover at <= 45 ms
POLICY = SloPolicy(underload_windows=12)

#: per-window TPOT (ms) recorded from sim engines at 20-25 ms per token, a busy
#: one just around its SLO, and one slowed down three times at window 6
FLAT = [31.2, 30.8, 31.5, 30.9, 31.1, 31.4, 30.7, 31.0, 31.3, 30.9, 31.2, 31.0, 30.8, 31.1]
STEP = [30.1, 29.8, 30.4, 30.0, 29.9, 30.2, 88.7, 90.4, 89.9, 91.2, 90.1, 89.6, 90.3, 90.0]
AROUND = [
    *(49.1, 51.3, 48.7, 52.0, 50.4, 47.9, 51.8, 49.6, 50.9, 48.8, 51.1, 49.3, 52.4, 48.2),
    *(50.6, 49.0, 51.7, 48.5, 50.2, 49.8, 51.4, 47.6, 52.1, 49.4, 50.8, 48.9, 51.2, 49.7),
]


def ev(
    tpot: float | None, *, waiting: int = 0, in_flight: int = 2, tokens: int = 400
) -> SloEvidence:
    return SloEvidence(
        tpot_ms=tpot,
        slo_ms=SLO,
        window_s=30.0,
        tokens=tokens if tpot is not None else 0,
        in_flight=in_flight,
        waiting=waiting,
        request_rate=1.5,
        instances=["inst-a", "inst-b"],
        source="direct",
        query="q",
    )


def run(
    series: list[SloEvidence], policy: SloPolicy = POLICY, state: SloState | None = None
) -> list[tuple[int, SloDecision]]:
    """Each window's decision, with the window's index."""
    traces = (f"trace-{i}" for i in itertools.count())
    state = state or SloState()
    out = []
    for i, evidence in enumerate(series):
        state, decision = step(
            state, evidence, now=i * INTERVAL, policy=policy, new_trace=lambda: next(traces)
        )
        if decision is not None:
            out.append((i, decision))
    return out


def kinds(decisions: list[tuple[int, SloDecision]]) -> list[tuple[int, str]]:
    return [(i, d.kind) for i, d in decisions]


@pytest.mark.parametrize(
    ("name", "series", "want"),
    [
        ("flat under the SLO: nothing", [ev(t) for t in FLAT], []),
        ("step: violation on the third slow window", [ev(t) for t in STEP], [(8, "violation")]),
        ("noise around the SLO: no event", [ev(t) for t in AROUND], []),
        (
            "unknown windows neither break nor extend a streak",
            [ev(30), ev(90), ev(None), ev(91), ev(None, in_flight=1), ev(92)],
            [(5, "violation")],
        ),
        (
            "a window in the hysteresis band breaks the streak",
            [ev(90), ev(91), ev(49), ev(90), ev(92), ev(93)],
            [(5, "violation")],
        ),
        (
            "no instances or no SLO: nothing counts",
            [SloEvidence(tpot_ms=99, slo_ms=SLO)] * 5 + [ev(99, tokens=1)] * 2,
            [],
        ),
        (
            "busy but fast: underload after 12 low windows",
            [ev(20)] * 14,
            [(11, "underload")],
        ),
        ("fast but requests waiting: not underloaded", [ev(20, waiting=3)] * 14, []),
        (
            "idle: underload although TPOT is unknown",
            [ev(None, in_flight=0)] * 12,
            [(11, "underload")],
        ),
        ("busy with nothing finished: unknown, nothing", [ev(None, in_flight=3)] * 14, []),
    ],
)
def test_table(name: str, series: list[SloEvidence], want: list[tuple[int, str]]) -> None:
    assert kinds(run(series)) == want, name


def test_violation_then_recovery_is_one_episode_with_its_evidence() -> None:
    policy = SloPolicy(cooldown_s=0)
    decisions = run([ev(t) for t in STEP] + [ev(30.0)] * 4, policy)
    # without a cooldown, a lasting violation repeats every k windows, in the same episode
    assert kinds(decisions) == [(8, "violation"), (11, "violation"), (16, "recovered")]
    (_, violation), _, (_, recovered) = decisions
    assert {d.trace_id for _, d in decisions} == {"trace-0"}
    assert violation.evidence.windows == 3 and violation.evidence.tpot_ms == pytest.approx(89.9)
    assert violation.evidence.instances == ["inst-a", "inst-b"]
    assert violation.evidence.query == "q" and violation.evidence.window_s == 30.0
    assert recovered.evidence.tpot_ms == 30.0


def test_next_episode_gets_a_new_trace() -> None:
    policy = SloPolicy(cooldown_s=0)
    series = [ev(90)] * 3 + [ev(30)] * 3 + [ev(90)] * 3
    decisions = run(series, policy)
    assert kinds(decisions) == [(2, "violation"), (5, "recovered"), (8, "violation")]
    assert [d.trace_id for _, d in decisions] == ["trace-0", "trace-0", "trace-1"]


def test_cooldown_holds_recovery_back_until_it_has_passed() -> None:
    # recovered from window 9 on, but the violation at 2 holds events until window 14 (70 s)
    decisions = run([ev(90)] * 3 + [ev(30)] * 14, SloPolicy(cooldown_s=60))
    assert kinds(decisions) == [(2, "violation"), (14, "recovered")]


def test_cooldown_drops_a_recovery_that_did_not_last() -> None:
    series = [ev(90)] * 3 + [ev(30)] * 3 + [ev(90)] * 12
    decisions = run(series, SloPolicy(cooldown_s=60))
    # still violated when the cooldown ends: one more violation in the same episode
    assert kinds(decisions) == [(2, "violation"), (14, "violation")]
    assert {d.trace_id for _, d in decisions} == {"trace-0"}


def test_noise_just_over_the_slo_after_a_violation_does_not_flap() -> None:
    # violated, then TPOT wanders 46-54 ms: inside the hysteresis band or above, never recovered
    policy = SloPolicy(cooldown_s=0)
    noisy = [ev(t + 2) for t in AROUND]
    decisions = run([ev(90)] * 3 + noisy, policy)
    assert "recovered" not in {d.kind for _, d in decisions}
    assert decisions[0][0] == 2


def test_underload_repeats_while_it_lasts_and_ends_on_load() -> None:
    policy = SloPolicy(cooldown_s=0, underload_windows=4)
    series = [ev(20)] * 8 + [ev(40)] + [ev(20)] * 4
    decisions = run(series, policy)
    assert kinds(decisions) == [(3, "underload"), (7, "underload"), (12, "underload")]
    assert [d.trace_id for _, d in decisions] == ["trace-0", "trace-0", "trace-1"]


def test_violation_preempts_underload() -> None:
    policy = SloPolicy(cooldown_s=0, underload_windows=3)
    decisions = run([ev(20)] * 3 + [ev(90)] * 3, policy)
    assert kinds(decisions) == [(2, "underload"), (5, "violation")]
    assert decisions[1][1].trace_id != decisions[0][1].trace_id


def test_judge() -> None:
    v = judge(ev(50.0), POLICY)
    assert (v.above, v.healthy, v.low) == (False, False, False)
    v = judge(ev(25.0), POLICY)
    assert (v.above, v.healthy, v.low) == (False, True, True)
    v = judge(ev(50.1), POLICY)
    assert (v.above, v.healthy, v.low) == (True, False, False)


@pytest.mark.parametrize(
    "kw",
    [
        {"violation_windows": 0},
        {"underload_windows": 0},
        {"low_watermark": 0},
        {"low_watermark": 0.95},
        {"recover_ratio": 1.5},
        {"cooldown_s": -1},
    ],
)
def test_bad_policy(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SloPolicy(**kw)  # type: ignore[arg-type]


def test_headroom_counts_a_window_as_above_before_the_mean_reaches_the_slo() -> None:
    policy = policy_with_headroom(0.9, cooldown_s=0)
    assert (policy.headroom, policy.recover_ratio) == (0.9, pytest.approx(0.81))
    v = judge(ev(46.0), policy)  # over 45 ms = 50 x 0.9, under the SLO itself
    assert (v.above, v.healthy) == (True, False)
    assert judge(ev(40.0), policy).healthy  # 40 <= 50 x 0.81
    decisions = run([ev(46.0)] * 3 + [ev(40.0)] * 3, policy)
    assert kinds(decisions) == [(2, "violation"), (5, "recovered")]
    with pytest.raises(ValueError, match="below the violation threshold"):
        SloPolicy(headroom=0.9)  # recovery at SLO x 0.9 would not lie below it
    with pytest.raises(ValueError):
        SloPolicy(headroom=1.2)
