"""The jobs a bridge has in hand, and the cancels it saw for jobs it did not have.

Both are keyed by the job's cancel subject (``subjects.cancel(job_id)``), which
is exactly what a cancel message arrives on, so matching a cancel is one dict
lookup. A cancel can arrive before any bridge took the job (the gateway gave
up on a cold start); ``RecentCancels`` remembers those for a while so a bridge
that takes the job later drops it instead of running it for nobody.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

AbortReason = Literal["cancelled", "draining"]


@dataclass(slots=True, eq=False)
class RunningJob:
    """One job between its acceptance and its last reply."""

    job_id: str
    cancel_subject: str
    #: stops the job's engine call (cancels the task that runs it)
    stop: Callable[[], object] = lambda: None
    tokens: int = 0
    #: the JetStream message was acked or handed back (nak)
    settled: bool = False
    #: why the job was stopped from outside, if it was
    abort_reason: AbortReason | None = None

    def abort(self, reason: AbortReason) -> None:
        """Stop the job's engine call once; the first reason wins."""
        if self.abort_reason is None:
            self.abort_reason = reason
            self.stop()


@dataclass(slots=True)
class RunningJobs:
    """The bridge's jobs in hand, by cancel subject."""

    _jobs: dict[str, RunningJob] = field(default_factory=dict)

    def add(self, job: RunningJob) -> None:
        self._jobs[job.cancel_subject] = job

    def remove(self, job: RunningJob) -> None:
        if self._jobs.get(job.cancel_subject) is job:
            del self._jobs[job.cancel_subject]

    def get(self, cancel_subject: str) -> RunningJob | None:
        return self._jobs.get(cancel_subject)

    def abort_all(self, reason: AbortReason) -> int:
        """Abort every job in hand; return how many."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.abort(reason)
        return len(jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(list(self._jobs.values()))


class RecentCancels:
    """Cancel subjects seen in the last ``ttl_s`` seconds (at most ``limit`` of them)."""

    def __init__(self, *, ttl_s: float, limit: int) -> None:
        if ttl_s <= 0 or limit < 1:
            raise ValueError(f"ttl_s must be > 0 and limit >= 1, got {ttl_s}, {limit}")
        self._ttl_s = ttl_s
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def remember(self, cancel_subject: str, now: float) -> None:
        self._seen[cancel_subject] = now
        self._seen.move_to_end(cancel_subject)
        self._expire(now)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def seen(self, cancel_subject: str, now: float) -> bool:
        at = self._seen.get(cancel_subject)
        return at is not None and now - at <= self._ttl_s

    def _expire(self, now: float) -> None:
        while self._seen:
            subject, at = next(iter(self._seen.items()))
            if now - at <= self._ttl_s:
                return
            del self._seen[subject]

    def __len__(self) -> int:
        return len(self._seen)
