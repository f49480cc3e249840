"""The decision core's ``Policy`` from the environment (MIGSERVE_SCALER_*)."""

from __future__ import annotations

from migserve_shared.env import Env
from migserve_shared.errors import ConfigError

from migserve_scaler.core.policy import Policy

POLICY_ENV_HELP = """\
  MIGSERVE_SCALER_COOLDOWN_S   after a model's plan finished, its SLO events wait this long
                               (default 60)
  MIGSERVE_SCALER_STEP_TIMEOUT_S  a plan step without a result is sent again after this long,
                               and fails after the last attempt (default 150)
  MIGSERVE_SCALER_STEP_ATTEMPTS  sends of one step at most (default 2)
  MIGSERVE_SCALER_SWAP_COST_S  expected seconds from a swap's start to its new instance ready,
                               until measured (default 5)
  MIGSERVE_SCALER_LOAD_FACTOR  a violation's load is expected to last its observed duration
                               times this; a slower swap is not started (default 1)
  MIGSERVE_SCALER_DRAIN_TIMEOUT_S  how long a retired instance may finish its requests
                               (default 30)
  MIGSERVE_SCALER_MAX_MOVES    moves of other instances a plan may make for room (default 2)
  MIGSERVE_SCALER_BREAK_BEFORE_MAKE  retire before replacing when nothing else fits
                               (default true)
  MIGSERVE_SCALER_FAILURE_INTERVAL_S  one scale.failed per model and code per this many
                               seconds (default 60)
  MIGSERVE_SCALER_REPLACE_BACKOFF_S  after a failed plan, replacing a lost instance or
                               reaching min_replicas waits this long (default 30)
"""


def policy_from_env(e: Env, *, plan_timeout_s: float) -> Policy:
    """The policy the variables above describe; ConfigError names a bad one."""
    policy = Policy(
        plan_timeout_s=plan_timeout_s,
        cooldown_s=e.number("MIGSERVE_SCALER_COOLDOWN_S", 60.0, min=0.0),
        step_timeout_s=e.number("MIGSERVE_SCALER_STEP_TIMEOUT_S", 150.0, min=0.1),
        max_step_attempts=e.integer("MIGSERVE_SCALER_STEP_ATTEMPTS", 2, min=1, max=20),
        default_swap_cost_s=e.number("MIGSERVE_SCALER_SWAP_COST_S", 5.0, min=0.0),
        load_duration_factor=e.number("MIGSERVE_SCALER_LOAD_FACTOR", 1.0, min=0.0),
        drain_timeout_s=e.number("MIGSERVE_SCALER_DRAIN_TIMEOUT_S", 30.0, min=0.1),
        max_moves=e.integer("MIGSERVE_SCALER_MAX_MOVES", 2, min=0, max=4),
        allow_break_before_make=e.flag("MIGSERVE_SCALER_BREAK_BEFORE_MAKE", True),
        failure_report_interval_s=e.number("MIGSERVE_SCALER_FAILURE_INTERVAL_S", 60.0, min=0.0),
        replace_backoff_s=e.number("MIGSERVE_SCALER_REPLACE_BACKOFF_S", 30.0, min=0.0),
    )
    if policy.step_timeout_s <= policy.drain_timeout_s:
        raise ConfigError(
            f"MIGSERVE_SCALER_STEP_TIMEOUT_S={policy.step_timeout_s:g} must be above "
            f"MIGSERVE_SCALER_DRAIN_TIMEOUT_S={policy.drain_timeout_s:g} (a retire step drains)"
        )
    return policy
