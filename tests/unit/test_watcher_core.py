"""The watcher's TPOT arithmetic: windows, counter resets, token-weighted means."""

from __future__ import annotations

import pytest
from migserve_watcher.core.tpot import (
    History,
    InstanceWindow,
    Sample,
    add_sample,
    increase,
    instance_window,
    model_evidence,
    source_window,
    weighted_tpot,
)


def s(
    at: float, lat: float | None, n: float | None, tokens: float | None = None, **kw: float
) -> Sample:
    return Sample(at=at, latency_sum_s=lat, latency_count=n, tokens=tokens, **kw)


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([], None),
        ([5.0], None),
        ([1.0, 4.0], 3.0),
        ([1.0, 4.0, 10.0], 9.0),
        ([10.0, 2.0], 2.0),  # reset: the engine restarted, 2 is the increase since
        ([10.0, 12.0, 3.0, 5.0], 7.0),  # 2 before the reset, 3 at it, 2 after
        ([1.0, None, 4.0], 3.0),  # a scrape without the series is skipped
        ([None, None], None),
        ([0.0, 0.0], 0.0),
    ],
)
def test_increase_counts_resets(values: list[float | None], want: float | None) -> None:
    history = tuple(s(i, v, None) for i, v in enumerate(values))
    assert increase(history, "latency_sum_s") == want


def test_add_sample_keeps_the_window_and_its_base() -> None:
    h: History = ()
    for at in range(0, 50, 5):
        h = add_sample(h, s(at, at, at), window_s=30)
    # newest at 45: base is the newest sample at or before 15
    assert [x.at for x in h] == [15, 20, 25, 30, 35, 40, 45]
    assert add_sample((), s(0, 0, 0), window_s=30) == (s(0, 0, 0),)


@pytest.mark.parametrize(
    ("name", "history", "tpot", "tokens"),
    [
        ("no samples", (), None, 0),
        ("one sample: unknown", (s(0, 1.0, 50, 50),), None, 0),
        ("no new work: unknown, never zero", (s(0, 1.0, 50, 50), s(5, 1.0, 50, 50)), None, 0),
        ("20 ms per token", (s(0, 1.0, 50, 50), s(5, 3.0, 150, 150)), 20.0, 100),
        ("reset between scrapes", (s(0, 9.0, 300, 300), s(5, 0.5, 20, 20)), 25.0, 20),
        ("no token counter: count is tokens", (s(0, 0, 0), s(5, 0.3, 10)), 30.0, 10),
        ("series missing", (s(0, None, None), s(5, None, None)), None, 0),
    ],
)
def test_source_window(name: str, history: History, tpot: float | None, tokens: float) -> None:
    w = source_window(history)
    assert w.tpot_ms == (pytest.approx(tpot) if tpot is not None else None), name
    assert w.tokens == tokens


def test_bridge_first_engine_is_the_cross_check() -> None:
    engine = (s(0, 0.0, 0, 0, in_flight=2, waiting=1), s(10, 0.4, 2, 20, in_flight=3, waiting=4))
    bridge = (s(0, 0.0, 0, in_flight=7), s(10, 1.0, 25, in_flight=8))
    w = instance_window("i1", engine, bridge)
    # the bridge's live inter-token histogram decides: 1.0 s / 25 gaps = 40 ms over 25 tokens
    assert (w.source, w.tpot_ms, w.tokens, w.weight) == ("bridge", pytest.approx(40.0), 25, 25)
    # TGI-style engine TPOT (0.4 s / 2 requests = 200 ms) is carried as the cross-check
    assert w.engine_tpot_ms == pytest.approx(200.0)
    assert (w.in_flight, w.waiting) == (3, 4)
    evidence = model_evidence([w], slo_ms=100.0)
    assert (evidence.tpot_ms, evidence.engine_tpot_ms) == (
        pytest.approx(40.0),
        pytest.approx(200.0),
    )
    assert evidence.tpot_ms is not None and evidence.tpot_ms < evidence.slo_ms  # the bridge decides


def test_engine_fills_in_without_a_bridge_series() -> None:
    engine = (s(0, 0.0, 0, 0, in_flight=2, waiting=1), s(10, 0.4, 2, 20, in_flight=3, waiting=4))
    bridge = (s(0, None, None, in_flight=7), s(10, None, None, in_flight=8))
    only_engine = instance_window("i1", engine, bridge)
    assert (only_engine.source, only_engine.tpot_ms) == ("engine", pytest.approx(200.0))
    assert only_engine.engine_tpot_ms == pytest.approx(200.0)
    only_bridge = instance_window(
        "i1",
        (s(0, None, None), s(10, None, None)),
        (s(0, 0.0, 0, in_flight=7), s(10, 1.0, 25, in_flight=8)),
    )
    assert (only_bridge.source, only_bridge.tpot_ms) == ("bridge", pytest.approx(40.0))
    assert only_bridge.engine_tpot_ms is None
    assert only_bridge.in_flight == 8
    assert model_evidence([only_bridge], slo_ms=100.0).engine_tpot_ms is None
    neither = instance_window("i1", None, None)
    assert (neither.source, neither.tpot_ms, neither.tokens, neither.span_s) == ("", None, 0, 0)


def test_request_rate_from_the_request_counter() -> None:
    engine = (s(0, 0, 0, 0, requests=10), s(4, 0.1, 2, 8, requests=14))
    assert instance_window("i", engine, None).request_rate == pytest.approx(1.0)


def iw(tpot: float | None, weight: float, **kw: float) -> InstanceWindow:
    return InstanceWindow(
        instance_id=str(kw.get("id", "i")),
        span_s=kw.get("span", 30.0),
        tpot_ms=tpot,
        tokens=weight,
        weight=weight,
        request_rate=kw.get("rate", 0.0),
        in_flight=kw.get("in_flight", 0.0),
        waiting=kw.get("waiting", 0.0),
        source="engine",
    )


@pytest.mark.parametrize(
    ("windows", "want"),
    [
        ([], None),
        ([iw(None, 0)], None),
        ([iw(20, 100)], 20.0),
        ([iw(20, 300), iw(60, 100)], 30.0),  # token-weighted, not (20 + 60) / 2
        ([iw(20, 100), iw(None, 0)], 20.0),  # an idle instance does not drag it to zero
        ([iw(50, 0)], None),  # no weight: nothing completed
    ],
)
def test_weighted_tpot(windows: list[InstanceWindow], want: float | None) -> None:
    got = weighted_tpot(windows)
    assert got == (pytest.approx(want) if want is not None else None)


def test_model_evidence_sums_load_and_lists_instances() -> None:
    windows = [
        iw(20, 300, id="b", in_flight=2, waiting=1, rate=0.5, span=29.5),
        iw(60, 100, id="a", in_flight=1, waiting=3, rate=0.25, span=30.2),
    ]
    ev = model_evidence(windows, slo_ms=40)
    assert ev.tpot_ms == pytest.approx(30.0) and ev.slo_ms == 40
    assert (ev.tokens, ev.in_flight, ev.waiting) == (400, 3, 4)
    assert ev.instances == ["a", "b"] and ev.source == "direct"
    assert ev.window_s == pytest.approx(30.2) and ev.request_rate == pytest.approx(0.75)


def test_model_evidence_without_work_is_unknown() -> None:
    ev = model_evidence([iw(None, 0, id="idle")], slo_ms=40)
    assert ev.tpot_ms is None and ev.tokens == 0 and ev.instances == ["idle"]
