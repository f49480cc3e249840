"""The bridge's command line and environment: defaults, and errors that name the value."""

from __future__ import annotations

import pytest
from migserve_agent.bridge.metrics import OUTCOMES, BridgeMetrics
from migserve_agent.bridge.settings import settings_from_args
from migserve_shared.errors import ConfigError

ARGS = [
    "--model", "org/m:1", "--instance-id", "inst-1", "--node", "node-a",
    "--engine-url", "http://127.0.0.1:8080/", "--engine-kind", "vllm",
    "--slots", "4", "--metrics-port", "0",
]  # fmt: skip


def test_flags_and_defaults() -> None:
    s = settings_from_args(ARGS, {})
    assert (s.model, s.instance_id, s.node, s.engine_kind, s.slots) == (
        "org/m:1",
        "inst-1",
        "node-a",
        "vllm",
        4,
    )
    assert s.engine_base_url == "http://127.0.0.1:8080"
    assert (s.metrics_port, s.metrics_host) == (0, "127.0.0.1")
    assert (s.ack_wait_s, s.max_attempts, s.drain_timeout_s) == (30.0, 3, 60.0)
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.nats.name == "migserve-bridge:inst-1"
    assert (s.log_json, s.log_level) == (True, "INFO")
    assert s.profile == ""
    assert settings_from_args([*ARGS, "--profile", "1g.10gb"], {}).profile == "1g.10gb"


def test_environment() -> None:
    env = {
        "MIGSERVE_NATS_URL": "nats://10.0.0.1:4222",
        "MIGSERVE_LOG_FORMAT": "text",
        "MIGSERVE_LOG_LEVEL": "debug",
    }
    more = ["--ack-wait-s", "5", "--max-attempts", "2", "--drain-timeout-s", "0"]
    s = settings_from_args([*ARGS, *more, "--metrics-host", "0.0.0.0"], env)
    assert s.nats.url == "nats://10.0.0.1:4222"
    assert (s.log_json, s.log_level) == (False, "DEBUG")
    assert (s.ack_wait_s, s.max_attempts, s.drain_timeout_s) == (5.0, 2, 0.0)
    assert s.metrics_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--model", "bad model", "--model='bad model'"),
        ("--engine-url", "127.0.0.1:8080", "--engine-url='127.0.0.1:8080'"),
        ("--slots", "0", "--slots=0"),
        ("--metrics-port", "70000", "--metrics-port=70000"),
        ("--ack-wait-s", "0.1", "--ack-wait-s=0.1"),
        ("--max-attempts", "0", "--max-attempts=0"),
        ("--drain-timeout-s", "-1", "--drain-timeout-s=-1.0"),
        ("--instance-id", " ", "--instance-id=' '"),
    ],
)
def test_bad_flag_values_are_named(flag: str, value: str, named: str) -> None:
    args = list(ARGS)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(ConfigError) as err:
        settings_from_args(args, {})
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MIGSERVE_NATS_URL": "http://x"}, "MIGSERVE_NATS_URL"),
        ({"MIGSERVE_LOG_FORMAT": "xml"}, "MIGSERVE_LOG_FORMAT"),
        ({"MIGSERVE_LOG_LEVEL": "loud"}, "MIGSERVE_LOG_LEVEL"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_from_args(ARGS, env)


@pytest.mark.parametrize(
    "args", [[], ARGS[:-2], [*ARGS, "--engine-kind", "ollama"], [*ARGS, "--slots", "x"]]
)
def test_missing_or_malformed_flags_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        settings_from_args(args, {})
    assert exc.value.code == 2


def test_metrics_have_fixed_labels_and_every_outcome() -> None:
    m = BridgeMetrics(
        model="org/m:1", instance="i", node="n", engine="sim", slots=3, profile="1g.10gb"
    )
    m.job("done")
    m.inter_token.observe(0.015)
    text = m.render().decode()
    labels = 'engine="sim",instance="i",model="org/m:1",node="n",profile="1g.10gb"'
    for outcome in OUTCOMES:
        jobs = 'engine="sim",instance="i",model="org/m:1",node="n",'
        assert f'migserve_bridge_jobs_total{{{jobs}outcome="{outcome}",profile="1g.10gb"}}' in text
    assert f"migserve_bridge_slots{{{labels}}} 3.0" in text
    bucket = "migserve_bridge_inter_token_seconds_bucket"
    base = {"model": "org/m:1", "instance": "i", "node": "n", "engine": "sim", "profile": "1g.10gb"}
    assert m.registry.get_sample_value(bucket, {**base, "le": "0.016"}) == 1
    assert m.registry.get_sample_value(bucket, {**base, "le": "0.014"}) == 0
    assert m.jobs("done") == 1
    assert m.jobs("bad") == 0
