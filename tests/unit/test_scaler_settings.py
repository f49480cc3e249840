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


def test_policy_defaults_and_values() -> None:
    default = settings_from_env({}).policy
    assert (default.cooldown_s, default.step_timeout_s, default.max_step_attempts) == (60, 150, 2)
    assert default.allow_break_before_make and default.plan_timeout_s == 180
    p = settings_from_env(
        {
            "MIGSERVE_PLAN_TIMEOUT_S": "40",
            "MIGSERVE_SCALER_COOLDOWN_S": "2",
            "MIGSERVE_SCALER_STEP_TIMEOUT_S": "20",
            "MIGSERVE_SCALER_STEP_ATTEMPTS": "3",
            "MIGSERVE_SCALER_SWAP_COST_S": "1.5",
            "MIGSERVE_SCALER_LOAD_FACTOR": "2",
            "MIGSERVE_SCALER_DRAIN_TIMEOUT_S": "5",
            "MIGSERVE_SCALER_MAX_MOVES": "0",
            "MIGSERVE_SCALER_BREAK_BEFORE_MAKE": "false",
            "MIGSERVE_SCALER_FAILURE_INTERVAL_S": "10",
        }
    ).policy
    assert (p.plan_timeout_s, p.cooldown_s, p.step_timeout_s, p.max_step_attempts) == (40, 2, 20, 3)
    assert (p.default_swap_cost_s, p.load_duration_factor, p.drain_timeout_s) == (1.5, 2, 5)
    assert (p.max_moves, p.allow_break_before_make, p.failure_report_interval_s) == (0, False, 10)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MIGSERVE_SCALER_COOLDOWN_S": "-1"}, "MIGSERVE_SCALER_COOLDOWN_S"),
        ({"MIGSERVE_SCALER_STEP_ATTEMPTS": "0"}, "MIGSERVE_SCALER_STEP_ATTEMPTS"),
        ({"MIGSERVE_SCALER_BREAK_BEFORE_MAKE": "maybe"}, "MIGSERVE_SCALER_BREAK_BEFORE_MAKE"),
        ({"MIGSERVE_SCALER_STEP_TIMEOUT_S": "10"}, "MIGSERVE_SCALER_STEP_TIMEOUT_S"),
    ],
)
def test_bad_policy_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from_env(env)


def test_consumer_takes_slo_events() -> None:
    assert {"slo.violation", "slo.underload", "slo.recovered"} <= set(consumed_kinds())


def test_replace_backoff_from_the_environment() -> None:
    assert settings_from_env({}).policy.replace_backoff_s == 30
    p = settings_from_env({"MIGSERVE_SCALER_REPLACE_BACKOFF_S": "4"}).policy
    assert p.replace_backoff_s == 4
    with pytest.raises(ConfigError, match="MIGSERVE_SCALER_REPLACE_BACKOFF_S"):
        settings_from_env({"MIGSERVE_SCALER_REPLACE_BACKOFF_S": "-1"})


def test_help_lists_every_variable_the_settings_read() -> None:
    import inspect
    import re

    from migserve_scaler import policy_env, settings

    source = inspect.getsource(settings) + inspect.getsource(policy_env)
    read = set(re.findall(r'"(MIGSERVE_[A-Z0-9_]+)"', source))
    listed = set(re.findall(r"MIGSERVE_[A-Z0-9_]+", settings.ENV_HELP))
    assert read and read <= listed, read - listed
