"""Prometheus text from engines and bridges -> ``core.Sample``.

Each engine names its series differently; ``ENGINE_SERIES`` maps an engine
kind to the series that give the watcher's engine-agnostic counters and
gauges (first name present wins, so older and newer names both work).
Samples of one series with different labels are added up; histogram buckets,
quantiles and ``_created`` timestamps are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from migserve_watcher.core.tpot import Sample


class ExpositionError(ValueError):
    """A /metrics body is not Prometheus text."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesNames:
    """Which series of a source feed each field of ``core.Sample``."""

    latency_sum: tuple[str, ...]
    latency_count: tuple[str, ...]
    tokens: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()
    in_flight: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()


#: Hugging Face TGI (and the sim engine, which exports TGI's names). The
#: per-request mean time per token is averaged over requests, weighted by tokens.
TGI = SeriesNames(
    latency_sum=("tgi_request_mean_time_per_token_duration_sum",),
    latency_count=("tgi_request_mean_time_per_token_duration_count",),
    tokens=("tgi_request_generated_tokens_sum",),
    requests=("tgi_request_success", "tgi_request_duration_count"),
    in_flight=("tgi_batch_current_size",),
    waiting=("tgi_queue_size",),
)

#: llama.cpp's llama-server with --metrics: seconds and tokens of finished requests.
LLAMACPP = SeriesNames(
    latency_sum=("llamacpp:tokens_predicted_seconds_total",),
    latency_count=("llamacpp:tokens_predicted_total",),
    tokens=("llamacpp:tokens_predicted_total",),
    in_flight=("llamacpp:requests_processing",),
    waiting=("llamacpp:requests_deferred",),
)

#: vLLM (inter_token_latency since 0.11, time_per_output_token before).
VLLM = SeriesNames(
    latency_sum=(
        "vllm:inter_token_latency_seconds_sum",
        "vllm:time_per_output_token_seconds_sum",
    ),
    latency_count=(
        "vllm:inter_token_latency_seconds_count",
        "vllm:time_per_output_token_seconds_count",
    ),
    tokens=("vllm:generation_tokens_total",),
    requests=("vllm:request_success_total",),
    in_flight=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
)

#: migserve's engine bridge: inter-token time as the bridge sees the stream.
BRIDGE = SeriesNames(
    latency_sum=("migserve_bridge_inter_token_seconds_sum",),
    latency_count=("migserve_bridge_inter_token_seconds_count",),
    in_flight=("migserve_bridge_in_flight",),
)

ENGINE_SERIES: dict[str, SeriesNames] = {"sim": TGI, "tgi": TGI, "llamacpp": LLAMACPP, "vllm": VLLM}

_SKIP_LABELS = frozenset({"le", "quantile"})


def flatten(text: str) -> dict[str, float]:
    """Sample name -> value summed over label sets (finite values only)."""
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.endswith("_created") or _SKIP_LABELS & s.labels.keys():
                    continue
                value = float(s.value)
                if math.isfinite(value):
                    out[s.name] = out.get(s.name, 0.0) + value
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ExpositionError(f"not Prometheus text: {exc}") from exc
    return out


def _value(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    """The first of ``names`` present; a counter may appear with or without ``_total``
    (the parser adds it to counters declared without it)."""
    for name in names:
        alt = name.removesuffix("_total") if name.endswith("_total") else name + "_total"
        for candidate in (name, alt):
            if candidate in values:
                return values[candidate]
    return None


def to_sample(values: dict[str, float], names: SeriesNames, *, at: float) -> Sample:
    return Sample(
        at=at,
        latency_sum_s=_value(values, names.latency_sum),
        latency_count=_value(values, names.latency_count),
        tokens=_value(values, names.tokens),
        requests=_value(values, names.requests),
        in_flight=_value(values, names.in_flight),
        waiting=_value(values, names.waiting),
    )


def parse_sample(text: str, names: SeriesNames, *, at: float) -> Sample:
    """Parse a /metrics body into a sample; ExpositionError when it is not Prometheus text."""
    return to_sample(flatten(text), names, at=at)
