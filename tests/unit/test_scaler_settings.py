"""The scaler's settings from the environment."""

from __future__ import annotations

import pytest
from migserve_scaler.adapters.events import consumed_kinds, filter_subjects
from migserve_scaler.settings import settings_from_env
from migserve_shared.errors import ConfigError


def test_defaults() -> None:
    s = settings_from_env({})
    assert s.scaler_id.startswith("scaler-") and s.plan_timeout_s == 180
    assert s.nats.url == "nats://127.0.0.1:4222" and s.metrics_port is None
    assert s.log_json and s.log_level == "INFO"


def test_values() -> None:
    s = settings_from_env(
        {
            "MIGSERVE_SCALER_ID": "scaler-1",
            "MIGSERVE_PLAN_TIMEOUT_S": "60",
            "MIGSERVE_NATS_URL": "nats://10.0.0.1:4222",
            "MIGSERVE_SCALER_METRICS_PORT": "9102",
            "MIGSERVE_LOG_FORMAT": "text",
        }
    )
    assert (s.scaler_id, s.plan_timeout_s, s.metrics_port, s.log_json) == (
        "scaler-1",
        60,
        9102,
        False,
    )
    assert s.nats.url == "nats://10.0.0.1:4222"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MIGSERVE_PLAN_TIMEOUT_S": "soon"}, "MIGSERVE_PLAN_TIMEOUT_S"),
        ({"MIGSERVE_PLAN_TIMEOUT_S": "0"}, "MIGSERVE_PLAN_TIMEOUT_S"),
        ({"MIGSERVE_NATS_URL": "http://x"}, "MIGSERVE_NATS_URL"),
        ({"MIGSERVE_LOG_LEVEL": "LOUD"}, "MIGSERVE_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from_env(env)


def test_consumer_filters_cover_the_kinds_the_scaler_acts_on() -> None:
    kinds = set(consumed_kinds())
    assert {
        "demand",
        "command.done",
        "command.failed",
        "instance.ready",
        "instance.failed",
    } <= kinds
    assert {"model.registered", "model.removed", "node.inventory"} <= kinds
    assert not {"scale.decided", "scale.failed", "metrics.snapshot"} & kinds
    assert "llm.evt.demand.*" in filter_subjects()
