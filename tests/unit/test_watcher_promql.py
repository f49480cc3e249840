"""The prometheus source (against a fake Prometheus HTTP API), its PromQL, and file_sd targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from migserve_shared.env import NatsSettings
from migserve_shared.messages import InstanceRecord, ModelSpec
from migserve_watcher.adapters.direct import DirectSource
from migserve_watcher.adapters.file_sd import target_groups, write_file_sd
from migserve_watcher.adapters.prometheus import PrometheusError, PrometheusSource, instant_query
from migserve_watcher.adapters.promql import bridge_queries, duration, engine_queries
from migserve_watcher.app import build_source
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings

MODEL = "org/m"


def rec(instance: str, engine: str = "sim", **kw: Any) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance,
        model_id=kw.pop("model", MODEL),
        node="node-1",
        gpu_index=0,
        profile="1g.5gb",
        start=6,
        engine=engine,  # type: ignore[arg-type]
        state=kw.pop("state", "ready"),
        engine_url=kw.pop("engine_url", f"http://127.0.0.1:80{len(instance)}"),
        **kw,
    )


def test_promql_per_engine_kind() -> None:
    assert duration(30) == "30000ms" and duration(0.0001) == "1ms"
    q = engine_queries(MODEL, "llamacpp", 30)
    sel = 'migserve_model="org/m",migserve_target="engine",migserve_engine="llamacpp"'
    assert q.tpot_s == (
        f"sum by (migserve_instance) (rate(llamacpp:tokens_predicted_seconds_total{{{sel}}}"
        f"[30000ms])) / sum by (migserve_instance) (rate(llamacpp:tokens_predicted_total{{{sel}}}"
        f"[30000ms]))"
    )
    assert q.requests_per_s == ""  # llama.cpp counts no requests
    assert "vllm:inter_token_latency_seconds_sum" in engine_queries(MODEL, "vllm", 5).tpot_s
    tgi = engine_queries(MODEL, "tgi", 5)
    assert "tgi_request_mean_time_per_token_duration_count" in tgi.tpot_s
    assert 'tgi_request_success(_total)?"' in tgi.requests_per_s
    bridge = bridge_queries('a"b', 5)
    assert 'migserve_model="a\\"b",migserve_target="bridge"' in bridge.tpot_s
    assert "migserve_bridge_inter_token_seconds_sum" in bridge.tpot_s


def vector(*samples: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"migserve_instance": i}, "value": [1700000000.0, v]} for i, v in samples
            ],
        },
    }


def fake_prometheus(answers: dict[str, dict[str, Any]]) -> httpx.MockTransport:
    """Answers a query by the first key that occurs in it; an empty vector otherwise."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        query = request.url.params["query"]
        for needle, body in answers.items():
            if needle in query:
                return httpx.Response(200, json=body)
        return httpx.Response(200, json=vector())

    return httpx.MockTransport(handle)


async def collect(answers: dict[str, dict[str, Any]], records: list[InstanceRecord]) -> Any:
    metrics = WatcherMetrics()
    async with httpx.AsyncClient(transport=fake_prometheus(answers)) as http:
        source = PrometheusSource(
            http=http, metrics=metrics, url="http://prom:9090/", window_s=30, timeout_s=1
        )
        specs = {MODEL: ModelSpec(model_id=MODEL, memory_mb=100, tpot_slo_ms=40)}
        return await source.collect(specs, records), metrics


async def test_tpot_token_weighted_from_the_bridges_engine_as_cross_check() -> None:
    answers = {
        "rate(tgi_request_mean_time_per_token_duration_sum": vector(("a", "0.02"), ("c", "NaN")),
        'increase({__name__=~"tgi_request_generated_tokens_sum': vector(("a", "300"), ("c", "0")),
        "rate(migserve_bridge_inter_token_seconds_sum": vector(("b", "0.06"), ("a", "0.01")),
        'increase({__name__=~"migserve_bridge_inter_token_seconds_count': vector(
            ("b", "100"), ("a", "300")
        ),
        "tgi_batch_current_size": vector(("a", "2"), ("c", "1")),
        "tgi_queue_size": vector(("a", "1")),
        "tgi_request_success": vector(("a", "0.5")),
    }
    records = [rec("a"), rec("b", "llamacpp"), rec("c"), rec("x", model="org/unregistered")]
    got, metrics = await collect(answers, records)
    assert list(got) == [MODEL]
    ev = got[MODEL]
    # the bridges decide: a 10 ms x 300 tokens, b 60 ms x 100; c: unknown
    assert ev.tpot_ms == pytest.approx(22.5) and ev.tokens == 400
    # the engines' own TPOT is the cross-check: only a's (20 ms) is known
    assert ev.engine_tpot_ms == pytest.approx(20.0)
    assert (ev.in_flight, ev.waiting, ev.request_rate) == (3, 1, 0.5)
    assert ev.instances == ["a", "b", "c"] and ev.source == "prometheus"
    assert ev.window_s == 30 and "tgi_request_mean_time_per_token_duration_sum" in ev.query
    assert "llamacpp:tokens_predicted_seconds_total" in ev.query
    ok = metrics.registry.get_sample_value(
        "migserve_watcher_scrapes_total", {"target": "prometheus", "result": "ok"}
    )
    assert ok == 1


async def test_no_work_is_unknown_and_errors_are_unknown_too() -> None:
    got, _ = await collect({}, [rec("a")])
    assert got[MODEL].tpot_ms is None and got[MODEL].instances == ["a"]
    bad = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    got, metrics = await collect({"rate(": bad}, [rec("a")])
    assert got[MODEL].tpot_ms is None and got[MODEL].slo_ms == 40
    errors = metrics.registry.get_sample_value(
        "migserve_watcher_scrapes_total", {"target": "prometheus", "result": "error"}
    )
    assert errors == 1


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (httpx.Response(503, text="down"), "failed|503"),
        (httpx.Response(400, json={"status": "error", "error": "bad"}), "400: bad"),
        (
            httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix"}}),
            "vector",
        ),
        (
            httpx.Response(
                200, json={"status": "success", "data": {"resultType": "vector", "result": [{}]}}
            ),
            "malformed",
        ),
    ],
)
async def test_instant_query_errors(response: httpx.Response, match: str) -> None:
    transport = httpx.MockTransport(lambda _: response)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(PrometheusError, match=match):
            await instant_query(http, "http://prom", "up", timeout_s=1)
        assert await instant_query(http, "http://prom", "", timeout_s=1) == {}


def test_file_sd_targets(tmp_path: Path) -> None:
    records = [
        rec("b", bridge_metrics_url="http://127.0.0.1:9101/metrics"),
        rec("a", "llamacpp", engine_url="http://127.0.0.1:8001/"),
        rec("s", state="starting"),
        rec("k", engine_url="https://pod-1:8443/custom/metrics"),
    ]
    groups = target_groups(records)
    assert [(g["targets"], g["labels"]["migserve_target"]) for g in groups] == [  # type: ignore[index]
        (["127.0.0.1:8001"], "engine"),
        (["127.0.0.1:801"], "engine"),
        (["127.0.0.1:9101"], "bridge"),
        (["pod-1:8443"], "engine"),
    ]
    assert groups[0]["labels"] == {
        "migserve_model": MODEL,
        "migserve_instance": "a",
        "migserve_node": "node-1",
        "migserve_engine": "llamacpp",
        "migserve_profile": "1g.5gb",
        "migserve_target": "engine",
    }
    labels = groups[3]["labels"]
    assert labels["__metrics_path__"] == "/custom/metrics" and labels["__scheme__"] == "https"  # type: ignore[index]

    path = tmp_path / "sd" / "migserve.json"
    assert write_file_sd(path, records) is True
    assert json.loads(path.read_text()) == groups
    assert write_file_sd(path, records) is False  # unchanged: not rewritten
    assert write_file_sd(path, []) is True and json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["migserve.json"]


async def test_build_source_picks_the_configured_one() -> None:
    async with httpx.AsyncClient() as http:
        for name, cls in (("direct", DirectSource), ("prometheus", PrometheusSource)):
            settings = WatcherSettings(nats=NatsSettings(), metrics_source=name)
            source = build_source(settings, http=http, metrics=WatcherMetrics())
            assert isinstance(source, cls) and source.name == name
