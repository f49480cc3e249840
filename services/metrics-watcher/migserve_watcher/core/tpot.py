"""TPOT and load from scraped counters: the metrics watcher's pure arithmetic.

Every scrape of one metrics source (an engine's or a bridge's /metrics)
becomes a ``Sample``: engine-agnostic counters (time spent per output token
and how many observations that time covers, output tokens, finished
requests) and gauges (requests generating, requests waiting). A source's
``History`` keeps the samples of the last window, plus the newest sample
before it as the base. Counters are differenced over the window the way
Prometheus' ``increase()`` does: a counter that went down was reset (the
engine restarted) and its new value is the increase since.

Per instance, TPOT is ``increase(latency_sum) / increase(latency_count)``:
what FACTS.md's PromQL computes. The bridge's live inter-token histogram is
the decision value; the engine's own TPOT is carried beside it as a
cross-check (``engine_tpot_ms``) and is the decision value only for an
instance whose bridge exports no latency series. Per model, TPOT is the
token-weighted mean of its instances' TPOT. No completed work in the window
gives ``None`` (unknown), never zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from migserve_shared.messages import SloEvidence

Counter = Literal["latency_sum_s", "latency_count", "tokens", "requests"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One scrape of one metrics source; None where the source lacks a series."""

    #: when it was taken (seconds, monotonic)
    at: float
    #: counter: seconds summed over the latency observations
    latency_sum_s: float | None = None
    #: counter: latency observations (tokens, or requests for per-request TPOT)
    latency_count: float | None = None
    #: counter: output tokens generated
    tokens: float | None = None
    #: counter: requests finished
    requests: float | None = None
    #: gauge: requests generating now
    in_flight: float | None = None
    #: gauge: requests queued in the engine
    waiting: float | None = None


History = tuple[Sample, ...]


def add_sample(history: History, sample: Sample, *, window_s: float) -> History:
    """``history`` plus ``sample``, without samples older than the window's base.

    The base is the newest sample taken at least ``window_s`` before
    ``sample``; it stays so the window is covered from its start.
    """
    kept = (*history, sample)
    cutoff = sample.at - window_s
    base = 0
    for i, s in enumerate(kept):
        if s.at <= cutoff:
            base = i
    return kept[base:]


def increase(history: History, counter: Counter) -> float | None:
    """How much a counter grew across the history, counting resets; None when
    fewer than two samples carry it."""
    total = 0.0
    seen = False
    prev: float | None = None
    for s in history:
        value = getattr(s, counter)
        if value is None:
            continue
        if prev is not None:
            total += value - prev if value >= prev else value
            seen = True
        prev = value
    return total if seen else None


@dataclass(frozen=True, slots=True)
class SourceWindow:
    """What one source did over its window."""

    span_s: float
    #: the source exports a latency series at all
    has_latency: bool
    tpot_ms: float | None
    #: output tokens in the window (the latency count when no token counter exists)
    tokens: float
    latency_count: float
    requests: float | None
    in_flight: float | None
    waiting: float | None


def source_window(history: History) -> SourceWindow:
    if not history:
        return SourceWindow(0.0, False, None, 0.0, 0.0, None, None, None)
    newest = history[-1]
    lat_sum = increase(history, "latency_sum_s")
    lat_count = increase(history, "latency_count")
    tpot = None
    if lat_sum is not None and lat_count is not None and lat_count > 0 and lat_sum >= 0:
        tpot = 1000.0 * lat_sum / lat_count
    tokens = increase(history, "tokens")
    return SourceWindow(
        span_s=newest.at - history[0].at,
        has_latency=newest.latency_sum_s is not None and newest.latency_count is not None,
        tpot_ms=tpot,
        tokens=tokens if tokens is not None else (lat_count or 0.0),
        latency_count=lat_count or 0.0,
        requests=increase(history, "requests"),
        in_flight=newest.in_flight,
        waiting=newest.waiting,
    )


@dataclass(frozen=True, slots=True)
class InstanceWindow:
    """One instance's TPOT, tokens and load over the window."""

    instance_id: str
    span_s: float
    tpot_ms: float | None
    tokens: float
    #: weight of its TPOT in the model's mean (tokens, else latency observations)
    weight: float
    request_rate: float
    in_flight: float
    waiting: float
    #: which source gave the TPOT: "bridge", "engine" or "" (neither has latency series)
    source: str
    #: the engine's own TPOT over the window (cross-check), None when unknown
    engine_tpot_ms: float | None = None


def _first(*values: float | None) -> float:
    return next((v for v in values if v is not None), 0.0)


def instance_window(
    instance_id: str, engine: History | None, bridge: History | None
) -> InstanceWindow:
    """Combine an instance's engine and bridge windows: the bridge's series first,
    the engine's TPOT carried as the cross-check."""
    eng = source_window(engine or ())
    bri = source_window(bridge or ())
    if bri.has_latency:
        chosen, source = bri, "bridge"
    elif eng.has_latency:
        chosen, source = eng, "engine"
    else:
        chosen, source = eng, ""
    weight = chosen.tokens if chosen.tokens > 0 else chosen.latency_count
    requests = eng.requests if eng.requests is not None else bri.requests
    span = chosen.span_s or max(eng.span_s, bri.span_s)
    rate = requests / span if requests is not None and span > 0 else 0.0
    return InstanceWindow(
        instance_id=instance_id,
        span_s=span,
        tpot_ms=chosen.tpot_ms,
        tokens=chosen.tokens,
        weight=weight,
        request_rate=rate,
        in_flight=_first(eng.in_flight, bri.in_flight),
        waiting=_first(eng.waiting, bri.waiting),
        source=source,
        engine_tpot_ms=eng.tpot_ms,
    )


def weighted_tpot(windows: Iterable[InstanceWindow], *, engine: bool = False) -> float | None:
    """Token-weighted mean TPOT over instances that completed work; None if none did.

    ``engine=True`` averages the engines' own TPOT (the cross-check) instead.
    """
    num = 0.0
    den = 0.0
    for w in windows:
        tpot = w.engine_tpot_ms if engine else w.tpot_ms
        if tpot is not None and w.weight > 0:
            num += tpot * w.weight
            den += w.weight
    return num / den if den > 0 else None


def model_evidence(
    windows: Sequence[InstanceWindow], *, slo_ms: float, source: str = "direct", query: str = ""
) -> SloEvidence:
    """The evidence for one model's snapshot from its instances' windows."""
    tpot = weighted_tpot(windows)
    engine_tpot = weighted_tpot(windows, engine=True)
    return SloEvidence(
        tpot_ms=round(tpot, 3) if tpot is not None else None,
        engine_tpot_ms=round(engine_tpot, 3) if engine_tpot is not None else None,
        slo_ms=slo_ms,
        window_s=round(max((w.span_s for w in windows), default=0.0), 3),
        tokens=max(0, round(sum(w.tokens for w in windows))),
        in_flight=max(0, round(sum(w.in_flight for w in windows))),
        waiting=max(0, round(sum(w.waiting for w in windows))),
        request_rate=round(sum(w.request_rate for w in windows), 4),
        instances=sorted(w.instance_id for w in windows),
        source=source,
        query=query,
    )
