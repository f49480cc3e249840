"""When to publish a demand event for a model that has no ready instance.

Requests that wait for a model enter and leave the book; a demand event is
due for a model at most once per ``interval_s`` while any of its requests
waits (``now`` is a monotonic clock reading, passed in).
"""

from __future__ import annotations


class DemandBook:
    """Waiting requests per model and the last time demand was published for it."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._waiting: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def enter(self, model: str) -> None:
        self._waiting[model] = self._waiting.get(model, 0) + 1

    def leave(self, model: str) -> None:
        left = self._waiting.get(model, 0) - 1
        if left > 0:
            self._waiting[model] = left
        else:
            self._waiting.pop(model, None)
            self._last.pop(model, None)

    def waiting(self, model: str) -> int:
        return self._waiting.get(model, 0)

    def due(self, model: str, now: float) -> bool:
        """True (and recorded) when demand for ``model`` should be published now."""
        if not self._waiting.get(model):
            return False
        last = self._last.get(model)
        if last is not None and now - last < self._interval_s:
            return False
        self._last[model] = now
        return True
