"""Admission: bounded work in flight, overall and per API key.

Pure bookkeeping, called on the request path: ``admit`` before a job is
published, ``release`` when its run closes. Over the global bound the answer
is 503 (the gateway is full: back off and retry, maybe elsewhere); over a
key's bound it is 429 (this caller is using its share). Both carry
Retry-After. With auth off every caller is the same anonymous one, so only
the global bound applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.errors import UNAVAILABLE, ApiError


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_in_flight: int = 1024
    max_per_key: int = 64
    retry_after_s: int = 1


class Admission:
    """Counts of admitted requests, overall and by caller key id."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._total = 0
        self._by_key: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        return self._total

    def held_by(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def admit(self, key: str) -> None:
        """Count one more request of ``key``; ApiError 503 or 429 when over a bound."""
        limits = self.limits
        retry = {"Retry-After": str(limits.retry_after_s)}
        if self._total >= limits.max_in_flight:
            raise ApiError(
                503,
                f"the gateway is at its limit of {limits.max_in_flight} requests in flight "
                "(MIGSERVE_MAX_IN_FLIGHT); retry later",
                reason="overloaded",
                type=UNAVAILABLE,
                code="overloaded",
                headers=retry,
            )
        held = self._by_key.get(key, 0)
        if key != ANONYMOUS and held >= limits.max_per_key:
            raise ApiError(
                429,
                f"this API key already has {held} requests in flight, its limit is "
                f"{limits.max_per_key} (MIGSERVE_MAX_CONCURRENT_PER_KEY); retry later",
                reason="rate_limited",
                code="rate_limit_exceeded",
                headers=retry,
            )
        self._total += 1
        self._by_key[key] = held + 1

    def release(self, key: str) -> None:
        held = self._by_key.get(key, 0)
        if held <= 0:
            return
        self._total -= 1
        if held == 1:
            del self._by_key[key]
        else:
            self._by_key[key] = held - 1
