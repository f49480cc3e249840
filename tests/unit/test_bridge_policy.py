"""The bridge's pure decisions and bookkeeping: failures, expiry, subjects, cancels."""

from __future__ import annotations

import pytest
from migserve_agent.bridge.policy import (
    FailureAction,
    is_expired,
    is_reply_subject,
    on_engine_failure,
)
from migserve_agent.bridge.running import RecentCancels, RunningJob, RunningJobs

R = FailureAction


@pytest.mark.parametrize(
    ("tokens", "retryable", "delivered", "max_attempts", "action"),
    [
        (0, True, 1, 3, R.RETRY),
        (0, True, 2, 3, R.RETRY),
        (0, True, 3, 3, R.GIVE_UP),
        (0, True, 9, 3, R.GIVE_UP),
        (0, True, 1, 1, R.GIVE_UP),
        (0, False, 1, 3, R.REJECT),
        (0, False, 5, 3, R.REJECT),
        (1, True, 1, 3, R.END_STREAM),
        (40, False, 3, 3, R.END_STREAM),
    ],
)
def test_what_happens_to_a_job_whose_engine_failed(
    tokens: int, retryable: bool, delivered: int, max_attempts: int, action: FailureAction
) -> None:
    got = on_engine_failure(
        tokens_sent=tokens, retryable=retryable, delivered=delivered, max_attempts=max_attempts
    )
    assert got is action


@pytest.mark.parametrize(
    ("deadline", "now", "expired"), [(10.0, 9.0, False), (10.0, 10.0, False), (10.0, 10.001, True)]
)
def test_expiry(deadline: float, now: float, expired: bool) -> None:
    assert is_expired(deadline, now) is expired


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("_INBOX.abc.def", True),
        ("reply", True),
        ("llm.reply.x-y_z", True),
        ("", False),
        ("a..b", False),
        (".a", False),
        ("a.", False),
        ("a b", False),
        ("a\tb", False),
        ("a.*", False),
        ("a.>", False),
        ("x" * 1025, False),
    ],
)
def test_reply_subjects(subject: str, ok: bool) -> None:
    assert is_reply_subject(subject) is ok


def test_running_jobs_abort_once_with_the_first_reason() -> None:
    stops: list[str] = []
    jobs = RunningJobs()
    a = RunningJob(job_id="a", cancel_subject="llm.cancel.a", stop=lambda: stops.append("a"))
    b = RunningJob(job_id="b", cancel_subject="llm.cancel.b", stop=lambda: stops.append("b"))
    jobs.add(a)
    jobs.add(b)
    assert jobs.get("llm.cancel.a") is a
    a.abort("cancelled")
    assert jobs.abort_all("draining") == 2
    assert stops == ["a", "b"]
    assert (a.abort_reason, b.abort_reason) == ("cancelled", "draining")
    jobs.remove(a)
    jobs.remove(a)
    assert len(jobs) == 1
    assert jobs.get("llm.cancel.a") is None


def test_removing_a_finished_job_keeps_a_newer_one_with_the_same_subject() -> None:
    jobs = RunningJobs()
    old = RunningJob(job_id="a", cancel_subject="s")
    new = RunningJob(job_id="a", cancel_subject="s")
    jobs.add(old)
    jobs.add(new)
    jobs.remove(old)
    assert jobs.get("s") is new


def test_recent_cancels_expire_and_stay_bounded() -> None:
    memo = RecentCancels(ttl_s=10, limit=3)
    memo.remember("a", now=0)
    assert memo.seen("a", now=5)
    assert not memo.seen("a", now=10.5)
    assert not memo.seen("b", now=5)
    for i, name in enumerate(["b", "c", "d", "e"]):
        memo.remember(name, now=1 + i)
    assert len(memo) == 3
    assert not memo.seen("b", now=5)
    assert memo.seen("e", now=5)
    memo.remember("f", now=100)
    assert len(memo) == 1


def test_recent_cancels_reject_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        RecentCancels(ttl_s=0, limit=1)
