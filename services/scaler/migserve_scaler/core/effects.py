"""What the core asks the adapters to do, in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from migserve_shared.messages import Command, Event, Plan

from migserve_scaler.core.view import Memory

#: makes a fresh id with a prefix (``ids.new_id`` in production, a counter in tests)
IdSource = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class PutPlan:
    """Write ``plan`` to the plans bucket with compare-and-set.

    ``expected_revision`` None means the key must not hold a live plan yet
    (a create); otherwise the write succeeds only at that revision. A failed
    compare-and-set aborts the rest of the outcome.
    """

    plan: Plan
    expected_revision: int | None


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Publish a command to a node's durable command stream."""

    node: str
    command: Command


@dataclass(frozen=True, slots=True)
class PublishEvent:
    event: Event


Effect = PutPlan | SendCommand | PublishEvent


@dataclass(frozen=True, slots=True)
class Outcome:
    """The effects of one decision, the memory after it, and notes for the log."""

    memory: Memory
    effects: tuple[Effect, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def then(self, other: Outcome) -> Outcome:
        """This outcome followed by ``other`` (whose memory wins)."""
        return Outcome(
            memory=other.memory,
            effects=self.effects + other.effects,
            notes=self.notes + other.notes,
        )
