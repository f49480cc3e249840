"""The scaler's tunables, as seen by the decision core (times in seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """How long things may take, how often failures are reported, how eagerly to scale."""

    #: a plan still in flight after this long per slice it creates is failed and
    #: rolled back (MIGSERVE_PLAN_TIMEOUT_S)
    plan_timeout_s: float = 180.0
    #: after a failed plan, demand for the model waits this long before a new plan
    retry_backoff_s: float = 5.0
    #: at most one ScaleFailed of one code per model in this interval
    failure_report_interval_s: float = 60.0
    #: a command without a result is published again after this long (deduplicated by id)
    resend_after_s: float = 15.0
    #: demand older than this is stale: its requests have timed out
    demand_max_age_s: float = 300.0
    #: a plan that finished this recently counts as a live instance even before
    #: the instance record reaches the view
    settle_s: float = 30.0
    #: after a model's plan finished, SLO events for it wait this long (the new
    #: instance's metrics need time to show its effect)
    cooldown_s: float = 60.0
    #: a step without a result after this long is sent again (one more attempt) or,
    #: after ``max_step_attempts``, fails the plan; above the agent's ready timeout
    step_timeout_s: float = 150.0
    #: sends of one step at most (timeouts and failed attempts both count)
    max_step_attempts: int = 2
    #: the expected time from a swap's start to its new instance ready, until
    #: swaps of that engine and profile were measured
    default_swap_cost_s: float = 5.0
    #: weight of the newest measurement in the swap-cost average (EWMA)
    swap_cost_alpha: float = 0.3
    #: the load an SLO violation answers is expected to last its observed
    #: duration (windows x window length) times this
    load_duration_factor: float = 1.0
    #: how long a retired instance may finish the requests it holds
    drain_timeout_s: float = 30.0
    #: moves of other instances a plan may make to open room for a slice (0: none)
    max_moves: int = 2
    #: retire an instance before its bigger replacement exists when nothing else fits
    allow_break_before_make: bool = True
    #: after a failed plan, plans the scaler starts on its own for the model
    #: (replacing a lost instance, reaching ``min_replicas``) wait this long
    replace_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "plan_timeout_s",
            "retry_backoff_s",
            "failure_report_interval_s",
            "resend_after_s",
            "demand_max_age_s",
            "settle_s",
            "cooldown_s",
            "step_timeout_s",
            "default_swap_cost_s",
            "load_duration_factor",
            "max_moves",
            "replace_backoff_s",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"Policy.{name} must be >= 0, got {value!r}")
        if not self.max_step_attempts >= 1:
            raise ValueError(
                f"Policy.max_step_attempts must be >= 1, got {self.max_step_attempts!r}"
            )
        if not 0 < self.swap_cost_alpha <= 1:
            raise ValueError(
                f"Policy.swap_cost_alpha must be in (0, 1], got {self.swap_cost_alpha!r}"
            )
        if not self.drain_timeout_s > 0:
            raise ValueError(f"Policy.drain_timeout_s must be > 0, got {self.drain_timeout_s!r}")
