"""The cold-start queue: how many requests may wait for a model's first instance.

While a model has no ready instance its requests are held (up to the cold
start timeout) until an instance comes up. Each held request costs a job in
the queue, a reply route and an open connection, so their number is bounded
per model and over all models. Over a bound the answer is 503 with
Retry-After (the model is starting: come back in a few seconds). Pure
bookkeeping, called on the request path: ``hold`` before the job is
published, ``release`` once the request stops waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from migserve_gateway.core.errors import UNAVAILABLE, ApiError

COLD_QUEUE_FULL = "cold_start_queue_full"


@dataclass(frozen=True, slots=True)
class HoldLimits:
    #: requests held for one model without a ready instance
    max_per_model: int = 256
    #: requests held for all such models together
    max_total: int = 1024
    retry_after_s: int = 5


class ColdHolds:
    """Counts of requests waiting for a model's first ready instance."""

    def __init__(self, limits: HoldLimits) -> None:
        self.limits = limits
        self._total = 0
        self._by_model: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self._total

    def held(self, model: str) -> int:
        return self._by_model.get(model, 0)

    def hold(self, model: str) -> None:
        """Count one more request waiting for ``model``; ApiError 503 when a bound is hit."""
        limits = self.limits
        held = self._by_model.get(model, 0)
        if held >= limits.max_per_model:
            raise _full(
                f"{held} requests already wait for an instance of {model} to start, the "
                f"limit is {limits.max_per_model} (MIGSERVE_MAX_HELD_PER_MODEL); retry later",
                limits.retry_after_s,
            )
        if self._total >= limits.max_total:
            raise _full(
                f"{self._total} requests already wait for models to start, the limit is "
                f"{limits.max_total} (MIGSERVE_MAX_HELD); retry later",
                limits.retry_after_s,
            )
        self._total += 1
        self._by_model[model] = held + 1

    def release(self, model: str) -> None:
        held = self._by_model.get(model, 0)
        if held <= 0:
            return
        self._total -= 1
        if held == 1:
            del self._by_model[model]
        else:
            self._by_model[model] = held - 1


def _full(message: str, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        message,
        reason=COLD_QUEUE_FULL,
        type=UNAVAILABLE,
        code=COLD_QUEUE_FULL,
        headers={"Retry-After": str(retry_after_s)},
    )
