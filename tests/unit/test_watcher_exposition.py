"""Engine and bridge /metrics text -> engine-agnostic samples; the watcher's settings."""

from __future__ import annotations

import pytest
from migserve_agent.sim_engine.metrics import SimMetrics
from migserve_shared.errors import ConfigError
from migserve_watcher.adapters.exposition import (
    BRIDGE,
    ENGINE_SERIES,
    ExpositionError,
    flatten,
    parse_sample,
)
from migserve_watcher.adapters.scrape import metrics_url
from migserve_watcher.core.tpot import Sample
from migserve_watcher.settings import settings_from_env


def test_sim_engine_tgi_metrics() -> None:
    metrics = SimMetrics()
    for tpot_s, tokens in ((0.02, 10), (0.04, 30)):
        metrics.request_received()
        metrics.request_succeeded(
            duration_s=1, queue_s=0, inference_s=tpot_s * tokens, generated_tokens=tokens
        )
    metrics.queue_size.set(3)
    metrics.batch_size.set(2)
    got = parse_sample(metrics.render().decode(), ENGINE_SERIES["sim"], at=7.0)
    assert got.latency_sum_s == pytest.approx(0.06)
    assert (got.latency_count, got.tokens, got.requests) == (2, 40, 2)
    assert (got.in_flight, got.waiting, got.at) == (2, 3, 7.0)


LLAMACPP_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 28
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 120
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 1.68
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 4
"""

VLLM_TEXT = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} NaN
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="m"} 5.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 90.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 90.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 2.25
# TYPE vllm:inter_token_latency_seconds_created gauge
vllm:inter_token_latency_seconds_created{engine="0",model_name="m"} 1.7e+09
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 95.0
"""

OLD_VLLM_TEXT = """\
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_count{model_name="m"} 10.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.5
"""

BRIDGE_TEXT = """\
# TYPE migserve_bridge_inter_token_seconds histogram
migserve_bridge_inter_token_seconds_bucket{le="+Inf"} 40.0
migserve_bridge_inter_token_seconds_count 40.0
migserve_bridge_inter_token_seconds_sum 0.8
# TYPE migserve_bridge_in_flight gauge
migserve_bridge_in_flight 2.0
"""


@pytest.mark.parametrize(
    ("engine", "text", "want"),
    [
        (
            "llamacpp",
            LLAMACPP_TEXT,
            Sample(at=0, latency_sum_s=1.68, latency_count=120, tokens=120, in_flight=1, waiting=4),
        ),
        (
            "vllm",
            VLLM_TEXT,
            Sample(at=0, latency_sum_s=2.25, latency_count=90, tokens=95, in_flight=3),
        ),
        ("vllm", OLD_VLLM_TEXT, Sample(at=0, latency_sum_s=0.5, latency_count=10)),
        ("tgi", "", Sample(at=0)),
    ],
)
def test_engine_series(engine: str, text: str, want: Sample) -> None:
    assert parse_sample(text, ENGINE_SERIES[engine], at=0) == want


def test_bridge_series() -> None:
    got = parse_sample(BRIDGE_TEXT, BRIDGE, at=1)
    assert got == Sample(at=1, latency_sum_s=0.8, latency_count=40, in_flight=2)


def test_labels_are_summed_and_buckets_skipped() -> None:
    text = 'x_total{a="1"} 2\nx_total{a="2"} 3\nh_bucket{le="1"} 9\nq{quantile="0.5"} 1\n'
    assert flatten(text) == {"x_total": 5.0}


@pytest.mark.parametrize("text", ["<html>oops</html>\n", "metric{{{ 1\n", "m one\n"])
def test_garbage_is_an_exposition_error(text: str) -> None:
    with pytest.raises(ExpositionError, match="not Prometheus text"):
        parse_sample(text, BRIDGE, at=0)


@pytest.mark.parametrize(
    ("base", "want"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/metrics"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/metrics"),
        ("http://127.0.0.1:9100/metrics", "http://127.0.0.1:9100/metrics"),
        ("http://127.0.0.1:9100/metrics/", "http://127.0.0.1:9100/metrics/"),
    ],
)
def test_metrics_url(base: str, want: str) -> None:
    assert metrics_url(base) == want


def test_settings_defaults_and_errors() -> None:
    s = settings_from_env({})
    assert (s.interval_s, s.window_s, s.metrics_source, s.metrics_port) == (5, 30, "direct", None)
    s = settings_from_env({"MIGSERVE_WATCHER_INTERVAL_S": "0.5", "MIGSERVE_WATCHER_WINDOW_S": "2"})
    assert (s.interval_s, s.window_s, s.scrape_timeout_s) == (0.5, 2, 0.5)
    for env, name in [
        ({"MIGSERVE_METRICS_SOURCE": "graphite"}, "MIGSERVE_METRICS_SOURCE"),
        ({"MIGSERVE_WATCHER_INTERVAL_S": "soon"}, "MIGSERVE_WATCHER_INTERVAL_S"),
        ({"MIGSERVE_WATCHER_WINDOW_S": "1"}, "MIGSERVE_WATCHER_WINDOW_S"),
        ({"MIGSERVE_WATCHER_METRICS_PORT": "70000"}, "MIGSERVE_WATCHER_METRICS_PORT"),
        ({"MIGSERVE_SLO_VIOLATION_WINDOWS": "0"}, "MIGSERVE_SLO_VIOLATION_WINDOWS"),
        ({"MIGSERVE_SLO_UNDERLOAD_WINDOWS": "x"}, "MIGSERVE_SLO_UNDERLOAD_WINDOWS"),
        ({"MIGSERVE_SLO_LOW_WATERMARK": "1.5"}, "MIGSERVE_SLO_LOW_WATERMARK"),
        ({"MIGSERVE_SLO_COOLDOWN_S": "-1"}, "MIGSERVE_SLO_COOLDOWN_S"),
        ({"MIGSERVE_WATCHER_SLO_HEADROOM": "1.1"}, "MIGSERVE_WATCHER_SLO_HEADROOM"),
        (
            {"MIGSERVE_WATCHER_SLO_HEADROOM": "0.5", "MIGSERVE_SLO_LOW_WATERMARK": "0.5"},
            "MIGSERVE_WATCHER_SLO_HEADROOM",
        ),
    ]:
        with pytest.raises(ConfigError, match=name):
            settings_from_env(env)


def test_slo_settings() -> None:
    slo = settings_from_env({}).slo
    assert (slo.violation_windows, slo.underload_windows) == (3, 24)
    assert (slo.low_watermark, slo.cooldown_s) == (0.5, 60)
    slo = settings_from_env(
        {
            "MIGSERVE_SLO_VIOLATION_WINDOWS": "2",
            "MIGSERVE_SLO_UNDERLOAD_WINDOWS": "20",
            "MIGSERVE_SLO_LOW_WATERMARK": "0.3",
            "MIGSERVE_SLO_COOLDOWN_S": "0",
        }
    ).slo
    assert (slo.violation_windows, slo.underload_windows) == (2, 20)
    assert (slo.low_watermark, slo.cooldown_s) == (0.3, 0)
    assert (slo.headroom, slo.recover_ratio) == (1.0, 0.9)
    slo = settings_from_env({"MIGSERVE_WATCHER_SLO_HEADROOM": "0.9"}).slo
    assert (slo.headroom, slo.recover_ratio) == (0.9, pytest.approx(0.81))


def test_prometheus_settings() -> None:
    s = settings_from_env({})
    assert (s.prometheus_url, s.file_sd_path) == ("http://127.0.0.1:9090", None)
    s = settings_from_env(
        {
            "MIGSERVE_METRICS_SOURCE": "prometheus",
            "MIGSERVE_PROMETHEUS_URL": "http://prom:9090",
            "MIGSERVE_PROMETHEUS_FILE_SD": "/tmp/sd/migserve.json",
        }
    )
    assert (s.metrics_source, s.prometheus_url) == ("prometheus", "http://prom:9090")
    assert str(s.file_sd_path) == "/tmp/sd/migserve.json"
