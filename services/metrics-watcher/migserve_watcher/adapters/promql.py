"""PromQL for one model's instances, per engine kind (FACTS.md) and for the bridge.

Targets carry the labels the local stack's file_sd (``adapters.file_sd``) or
the Kubernetes pod annotations / PodMonitor relabelling give them:
``migserve_model``, ``migserve_instance``, ``migserve_engine`` and
``migserve_target`` (``engine`` or ``bridge``). Every query is aggregated
``by (migserve_instance)``. TPOT per instance over a window W is
``rate(sum[W]) / rate(count[W])`` of the latency series; NaN (no completed
work) means unknown, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from migserve_watcher.adapters.exposition import BRIDGE, ENGINE_SERIES, SeriesNames

BY = "migserve_instance"


@dataclass(frozen=True, slots=True)
class InstanceQueries:
    """The queries of one kind of target of one model; "" where the target lacks the series."""

    #: seconds per token (the ratio of two rates)
    tpot_s: str
    #: output tokens in the window (weights of the token-weighted mean)
    tokens: str
    requests_per_s: str
    in_flight: str
    waiting: str


def duration(seconds: float) -> str:
    """A PromQL range duration in whole milliseconds (at least 1 ms)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(model: str, target: str, engine: str | None = None) -> str:
    labels = [f"migserve_model={_quote(model)}", f"migserve_target={_quote(target)}"]
    if engine is not None:
        labels.append(f"migserve_engine={_quote(engine)}")
    return ",".join(labels)


def _counter(name: str, sel: str) -> str:
    """A counter that some exporters name with ``_total`` and some without."""
    base = name.removesuffix("_total")
    return f"{{__name__=~{_quote(base + '(_total)?')},{sel}}}"


def queries(names: SeriesNames, sel: str, window_s: float) -> InstanceQueries:
    w = duration(window_s)
    lat_sum, lat_count = names.latency_sum[0], names.latency_count[0]
    tpot = (
        f"sum by ({BY}) (rate({lat_sum}{{{sel}}}[{w}]))"
        f" / sum by ({BY}) (rate({lat_count}{{{sel}}}[{w}]))"
    )
    token_series = names.tokens[0] if names.tokens else lat_count
    tokens = f"sum by ({BY}) (increase({_counter(token_series, sel)}[{w}]))"
    requests = (
        f"sum by ({BY}) (rate({_counter(names.requests[0], sel)}[{w}]))" if names.requests else ""
    )
    in_flight = f"sum by ({BY}) ({names.in_flight[0]}{{{sel}}})" if names.in_flight else ""
    waiting = f"sum by ({BY}) ({names.waiting[0]}{{{sel}}})" if names.waiting else ""
    return InstanceQueries(tpot, tokens, requests, in_flight, waiting)


def engine_queries(model: str, engine: str, window_s: float) -> InstanceQueries:
    """The queries for ``model``'s instances of one engine kind."""
    return queries(ENGINE_SERIES[engine], selector(model, "engine", engine), window_s)


def bridge_queries(model: str, window_s: float) -> InstanceQueries:
    """The queries for ``model``'s bridges (the live inter-token histogram)."""
    return queries(BRIDGE, selector(model, "bridge"), window_s)
