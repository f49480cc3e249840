"""The scaler's tunables, as seen by the decision core (times in seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """How long things may take and how often failures are reported."""

    #: a plan still in flight after this long is failed (MIGSERVE_PLAN_TIMEOUT_S)
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

    def __post_init__(self) -> None:
        for name in (
            "plan_timeout_s",
            "retry_backoff_s",
            "failure_report_interval_s",
            "resend_after_s",
            "demand_max_age_s",
            "settle_s",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"Policy.{name} must be >= 0, got {value!r}")
