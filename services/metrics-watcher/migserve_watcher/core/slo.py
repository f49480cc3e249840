"""Per-model SLO decisions from per-window evidence: the watcher's state machine.

Every interval the watcher has one ``SloEvidence`` per model (TPOT over the
last window, load, instances). ``step`` folds it into that model's
``SloState`` and returns at most one ``SloDecision``:

- ``violation`` after ``violation_windows`` (k) consecutive windows with TPOT
  above SLO x ``headroom`` ("above the SLO" below). A window's TPOT is a mean:
  a target on the share of tokens within the SLO (99%) needs the mean kept
  under it, which a headroom below 1 (0.9) gives. It opens an episode with a
  new trace id. While the model stays violated, another violation (same
  trace) is decided after k more windows above the SLO once the cooldown has
  passed, so the scaler can take its next step.
- ``recovered`` after k consecutive windows with TPOT at or below
  SLO x ``recover_ratio`` (hysteresis: a TPOT just under the SLO does not
  recover a violated model, so noise around the SLO cannot flap). It closes the
  episode and carries its trace id.
- ``underload`` after ``underload_windows`` consecutive windows with TPOT at or
  below SLO x ``low_watermark`` and low load (at most ``max_waiting`` requests
  waiting). A model with instances, nothing in flight and nothing waiting is
  idle: that counts as underloaded (and as healthy), although its TPOT is
  unknown. While underloaded, the decision repeats after as many windows again.

A window whose TPOT is unknown (no completed work while requests run) is
neither above nor below: it leaves every streak as it was. No event of a
model is decided within ``cooldown_s`` of its previous one; a decision held
back by the cooldown is taken at the first window after it whose streak still
qualifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec
from migserve_shared.messages import SloEvidence

SloKind = Literal["violation", "recovered", "underload"]
Phase = Literal["ok", "violated", "underloaded"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SloPolicy:
    """How eagerly the watcher turns windows into decisions."""

    #: k: consecutive windows above the SLO before a violation (and below it before recovery)
    violation_windows: int = 3
    #: a window is above when its TPOT exceeds SLO x this (below 1: headroom for the mean)
    headroom: float = 1.0
    #: consecutive low windows before an underload
    underload_windows: int = 24
    #: underload when TPOT is at or below SLO x this
    low_watermark: float = 0.5
    #: a violated model recovers only at or below SLO x this (hysteresis)
    recover_ratio: float = 0.9
    #: seconds after a model's event before its next one
    cooldown_s: float = 60.0
    #: low load: at most this many requests waiting
    max_waiting: int = 0

    def __post_init__(self) -> None:
        if self.violation_windows < 1 or self.underload_windows < 1:
            raise ValueError("violation_windows and underload_windows must be at least 1")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"need 0 < headroom ({self.headroom}) <= 1")
        if not 0 < self.low_watermark <= self.recover_ratio < self.headroom:
            raise ValueError(
                f"need 0 < low_watermark ({self.low_watermark}) <= recover_ratio "
                f"({self.recover_ratio}) < headroom ({self.headroom}): recovery and underload "
                "must lie below the violation threshold"
            )
        if self.cooldown_s < 0 or self.max_waiting < 0:
            raise ValueError("cooldown_s and max_waiting must not be negative")


#: recovery sits this far under the violation threshold (SLO x headroom)
RECOVER_UNDER_THRESHOLD = 0.9


def policy_with_headroom(headroom: float = 1.0, **fields: Any) -> SloPolicy:
    """The policy the watcher's settings (and the simulator) build: violation above
    SLO x ``headroom``, recovery at or below SLO x 0.9 x ``headroom`` (the same
    hysteresis under the violation threshold as without headroom). Raises
    ``ValueError`` for a policy ``SloPolicy`` rejects."""
    recover = RECOVER_UNDER_THRESHOLD * headroom
    return SloPolicy(headroom=headroom, recover_ratio=recover, **fields)


@dataclass(frozen=True, slots=True)
class SloState:
    """One model's position in the state machine."""

    phase: Phase = "ok"
    #: consecutive windows with TPOT above the SLO
    above: int = 0
    #: consecutive windows with TPOT at or below SLO x recover_ratio (or idle)
    healthy: int = 0
    #: consecutive windows with TPOT at or below SLO x low_watermark and low load (or idle)
    low: int = 0
    #: when the model's last event was decided (None: never)
    last_event_at: float | None = None
    #: the open episode's trace id ("" when none is open)
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class SloDecision:
    kind: SloKind
    trace_id: str
    #: the window's evidence, ``windows`` set to the streak that decided it
    evidence: SloEvidence


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """How one window counts: None where it does not count either way."""

    above: bool | None
    healthy: bool | None
    low: bool | None


def judge(evidence: SloEvidence, policy: SloPolicy) -> WindowVerdict:
    """Classify one window against the SLO."""
    slo = evidence.slo_ms
    if slo <= 0 or not evidence.instances:
        return WindowVerdict(None, None, None)
    tpot = evidence.tpot_ms
    if tpot is None:
        idle = evidence.in_flight == 0 and evidence.waiting == 0
        return WindowVerdict(False, True, True) if idle else WindowVerdict(None, None, None)
    return WindowVerdict(
        above=tpot > slo * policy.headroom,
        healthy=tpot <= slo * policy.recover_ratio,
        low=tpot <= slo * policy.low_watermark and evidence.waiting <= policy.max_waiting,
    )


def _streak(current: int, counts: bool | None) -> int:
    if counts is None:
        return current
    return current + 1 if counts else 0


def step(
    state: SloState,
    evidence: SloEvidence,
    *,
    now: float,
    policy: SloPolicy,
    new_trace: Callable[[], str],
) -> tuple[SloState, SloDecision | None]:
    """Fold one window into ``state``; the new state and at most one decision."""
    verdict = judge(evidence, policy)
    state = replace(
        state,
        above=_streak(state.above, verdict.above),
        healthy=_streak(state.healthy, verdict.healthy),
        low=_streak(state.low, verdict.low),
    )
    if state.phase == "underloaded" and verdict.low is False:
        state = replace(state, phase="ok", trace_id="")
    cooled = state.last_event_at is None or now - state.last_event_at >= policy.cooldown_s
    if not cooled:
        return state, None
    k = policy.violation_windows
    if state.above >= k:
        trace = state.trace_id if state.phase == "violated" else new_trace()
        decided = SloState(phase="violated", last_event_at=now, trace_id=trace)
        return decided, _decision("violation", trace, evidence, state.above)
    if state.phase == "violated":
        if state.healthy >= k:
            return (
                SloState(phase="ok", last_event_at=now),
                _decision("recovered", state.trace_id, evidence, state.healthy),
            )
        return state, None
    if state.low >= policy.underload_windows:
        trace = state.trace_id if state.phase == "underloaded" else new_trace()
        decided = SloState(phase="underloaded", last_event_at=now, trace_id=trace)
        return decided, _decision("underload", trace, evidence, state.low)
    return state, None


def _decision(kind: SloKind, trace: str, evidence: SloEvidence, windows: int) -> SloDecision:
    return SloDecision(kind, trace, msgspec.structs.replace(evidence, windows=windows))
