"""What became of each command this node executed, so a repeat does nothing.

Commands are idempotent by ``command_id``: the outcome of every finished
command is kept (the newest ``limit``, in ``<state dir>/commands.json``), and
a command seen again is answered from here. The command stream keeps
commands for a day, far fewer than ``limit`` on one node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
from migserve_shared.errors import ErrorCode

log = logging.getLogger(__name__)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a command ended."""

    command_id: str
    ok: bool
    instance_id: str = ""
    code: ErrorCode | None = None
    reason: str = ""
    #: the command found its work already done (an instance that exists, one that is gone)
    duplicate: bool = False
    at: float = 0.0


class _File(msgspec.Struct):
    version: int = 1
    outcomes: list[Outcome] = msgspec.field(default_factory=list)


class CommandLedger:
    """Outcomes of finished commands by command id, persisted after each record."""

    def __init__(self, path: Path, *, limit: int = 2000) -> None:
        self._path = path
        self._limit = limit
        self._outcomes: dict[str, Outcome] = {}
        if path.exists():
            try:
                data = msgspec.json.decode(path.read_bytes(), type=_File)
                self._outcomes = {o.command_id: o for o in data.outcomes}
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("command ledger %s unreadable (%s); starting empty", path, exc)

    def get(self, command_id: str) -> Outcome | None:
        return self._outcomes.get(command_id)

    def record(self, outcome: Outcome) -> None:
        self._outcomes[outcome.command_id] = outcome
        while len(self._outcomes) > self._limit:
            del self._outcomes[next(iter(self._outcomes))]
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(_File(outcomes=list(self._outcomes.values()))))
        os.replace(tmp, self._path)
