"""Per-key request rate: a token bucket for each API key.

Each key may start ``rate_per_s`` requests a second on average and up to
``burst`` at once. A request over its key's rate gets 429 with Retry-After
(the whole seconds until the bucket holds a token again). The rate and the
concurrency bound (``core.admission``) apply together. With auth off every
caller is the same anonymous one, which no per-key limit applies to. Pure:
the caller passes a monotonic ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.errors import ApiError


@dataclass(frozen=True, slots=True)
class RateLimits:
    #: requests a second per key; 0 turns the rate limit off
    rate_per_s: float = 0.0
    #: requests a key may start at once after being idle; 0: max(1, rate_per_s)
    burst: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    @property
    def capacity(self) -> float:
        return self.burst if self.burst > 0 else max(1.0, self.rate_per_s)


class KeyRateLimiter:
    """One token bucket per key: (tokens left, when they were counted)."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._capacity = limits.capacity
        self._buckets: dict[str, tuple[float, float]] = {}

    def tokens(self, key: str, now: float) -> float:
        """The tokens ``key`` has at ``now`` (full when it never asked)."""
        tokens, then = self._buckets.get(key, (self._capacity, now))
        return min(self._capacity, tokens + (now - then) * self.limits.rate_per_s)

    def take(self, key: str, now: float) -> None:
        """Spend one of ``key``'s tokens; ApiError 429 with Retry-After when it has none."""
        rate = self.limits.rate_per_s
        if rate <= 0 or key == ANONYMOUS:
            return
        tokens = self.tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait_s = max(1, math.ceil((1.0 - tokens) / rate))
            raise ApiError(
                429,
                f"this API key is over its rate of {rate:g} requests a second "
                f"(MIGSERVE_RATE_LIMIT_PER_KEY, burst {self._capacity:g}); "
                f"retry in {wait_s} s",
                reason="rate_limited",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait_s)},
            )
        self._buckets[key] = (tokens - 1.0, now)
