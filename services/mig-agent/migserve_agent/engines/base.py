"""The engine adapter Protocol: the command line of one engine on one slice.

An adapter knows one inference server (sim, llama.cpp, TGI, vLLM): how many
requests it serves at once on a profile (its slots), how to launch it on a
port, where its health check is and which route speaks OpenAI chat. The
runtime puts the slice into the process's environment; the adapter adds what
the engine itself needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from migserve_shared.errors import ErrorCode, MigserveError
from migserve_shared.messages import EngineKind, ModelSpec
from migserve_shared.mig import Profile


class EngineArgsError(MigserveError):
    """A model's engine_args hold a key or value the engine adapter refuses."""

    code = ErrorCode.BAD_REQUEST


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLaunch:
    """How to start one engine process."""

    argv: tuple[str, ...]
    #: variables added to the environment (the runtime adds the slice's UUID)
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    chat_route: str = "/v1/chat/completions"


class EngineAdapter(Protocol):
    """One kind of inference server."""

    @property
    def kind(self) -> EngineKind:
        """The ``EngineKind`` this adapter launches."""
        ...

    def slots(self, spec: ModelSpec, profile: Profile) -> int:
        """Requests the engine serves at once on a slice of ``profile``."""
        ...

    def launch(
        self, *, spec: ModelSpec, profile: Profile, host: str, port: int, slots: int
    ) -> EngineLaunch:
        """The command that serves ``spec`` on ``host:port``; EngineArgsError if refused."""
        ...
