"""The watcher's migserve_model_tpot_slo_seconds gauge follows the registered models."""

from __future__ import annotations

from migserve_shared.messages import ModelSpec
from migserve_watcher.metrics import MODEL_TPOT_SLO, WatcherMetrics
from prometheus_client import generate_latest


def spec(model_id: str, slo_ms: float) -> ModelSpec:
    return ModelSpec(model_id=model_id, memory_mb=1000, tpot_slo_ms=slo_ms)


def test_each_model_gets_its_slo_in_seconds() -> None:
    metrics = WatcherMetrics()
    metrics.show_models({"org/a": spec("org/a", 40), "org/b": spec("org/b", 125)})
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/a"}) == 0.04
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/b"}) == 0.125
    text = generate_latest(metrics.registry).decode()
    assert f'{MODEL_TPOT_SLO}{{model="org/a"}} 0.04' in text


def test_a_changed_slo_is_updated_and_a_removed_model_disappears() -> None:
    metrics = WatcherMetrics()
    metrics.show_models({"org/a": spec("org/a", 40), "org/b": spec("org/b", 125)})
    metrics.show_models({"org/a": spec("org/a", 80)})
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/a"}) == 0.08
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/b"}) is None
    metrics.show_models({})
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/a"}) is None
    assert f"{MODEL_TPOT_SLO}{{" not in generate_latest(metrics.registry).decode()
    # a model that comes back is exported again
    metrics.show_models({"org/b": spec("org/b", 50)})
    assert metrics.value(MODEL_TPOT_SLO, {"model": "org/b"}) == 0.05
