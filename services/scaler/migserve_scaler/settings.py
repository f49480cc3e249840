"""The scaler's settings, read once from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from migserve_shared.env import Env, NatsSettings, nats_settings

from migserve_scaler.core.policy import Policy
from migserve_scaler.leader import MAX_TTL_S
from migserve_scaler.policy_env import POLICY_ENV_HELP, policy_from_env

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

ENV_HELP = """\
environment:
  MIGSERVE_NATS_URL            NATS server (default nats://127.0.0.1:4222)
  MIGSERVE_SCALER_ID           this scaler's id, the source of its events
                               (default scaler-<hostname>-<pid>)
  MIGSERVE_PLAN_TIMEOUT_S      a plan still in flight after this is failed (default 180)
  MIGSERVE_SCALER_LEASE_TTL_S  seconds the leader's lease lasts without renewal (default 10,
                               1 to 15); replicas take over a silent leader after this
  MIGSERVE_SCALER_METRICS_PORT serve Prometheus metrics on this port (default: off)
  MIGSERVE_SCALER_METRICS_HOST address for the metrics port (default 127.0.0.1)
  MIGSERVE_LOG_FORMAT          json or text (default json)
  MIGSERVE_LOG_LEVEL           DEBUG, INFO, WARNING, ERROR (default INFO)
"""
ENV_HELP += POLICY_ENV_HELP


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalerSettings:
    scaler_id: str
    nats: NatsSettings
    #: a plan still in flight after this many seconds is failed
    plan_timeout_s: float = 180.0
    #: the leader lease: renewed every ttl/3, the leader stops acting at ttl - ttl/5
    #: without a renewal, another replica takes over after ttl
    lease_ttl_s: float = 10.0
    #: how often time-driven decisions run (plan timeouts, resends)
    tick_interval_s: float = 1.0
    #: Prometheus metrics port (None: not served)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_json: bool = True
    log_level: str = "INFO"
    #: the decision core's tunables (its plan_timeout_s is the one above)
    policy: Policy = field(default_factory=Policy)


def settings_from_env(env: Mapping[str, str]) -> ScalerSettings:
    """Settings from an environment mapping; ConfigError names a bad variable."""
    e = Env(env)
    default_id = f"scaler-{socket.gethostname()}-{os.getpid()}"
    scaler_id = e.text("MIGSERVE_SCALER_ID", default_id)
    port = e.integer("MIGSERVE_SCALER_METRICS_PORT", 0, min=0, max=65535)
    plan_timeout_s = e.number("MIGSERVE_PLAN_TIMEOUT_S", 180.0, min=1.0)
    return ScalerSettings(
        scaler_id=scaler_id,
        nats=nats_settings(e, f"migserve-scaler-{scaler_id}"),
        plan_timeout_s=plan_timeout_s,
        lease_ttl_s=e.number("MIGSERVE_SCALER_LEASE_TTL_S", 10.0, min=1.0, max=MAX_TTL_S),
        metrics_port=port or None,
        metrics_host=e.text("MIGSERVE_SCALER_METRICS_HOST", "127.0.0.1"),
        log_json=e.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")) == "json",
        log_level=e.choice("MIGSERVE_LOG_LEVEL", "INFO", LOG_LEVELS),
        policy=policy_from_env(e, plan_timeout_s=plan_timeout_s),
    )
