"""The bridge's decisions, as pure functions of their inputs (no I/O, no clock).

When the engine fails, what happens to the job depends on whether a token
already reached the client (then the stream can only end with an error), on
whether another instance could do better (a down or loading engine: yes; a
request the engine rejected: no), and on how often the job was delivered.
"""

from __future__ import annotations

import enum
import re
from typing import Final

#: reply subjects: NATS tokens without whitespace or wildcards, dot-separated
_SUBJECT_RE: Final = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


class FailureAction(enum.Enum):
    """What to do with a job whose engine call failed."""

    #: nak: the job goes back to the queue for another instance
    RETRY = "retry"
    #: ack and reply ENGINE_UNAVAILABLE (not retryable): it was tried often enough
    GIVE_UP = "give_up"
    #: ack and reply the engine's error (not retryable): it would fail anywhere
    REJECT = "reject"
    #: ack and end the started stream with ENGINE_FAILED
    END_STREAM = "end_stream"


def on_engine_failure(
    *, tokens_sent: int, retryable: bool, delivered: int, max_attempts: int
) -> FailureAction:
    """Decide a failed job's fate; ``delivered`` counts this delivery too."""
    if tokens_sent > 0:
        return FailureAction.END_STREAM
    if not retryable:
        return FailureAction.REJECT
    if delivered >= max_attempts:
        return FailureAction.GIVE_UP
    return FailureAction.RETRY


def is_expired(deadline: float, now: float) -> bool:
    """A job taken after its deadline is dropped (the client has given up)."""
    return now > deadline


def is_reply_subject(subject: str) -> bool:
    """``subject`` is a publishable NATS subject (no spaces, wildcards or empty tokens)."""
    return len(subject) <= 1024 and _SUBJECT_RE.match(subject) is not None
