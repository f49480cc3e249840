"""The bridge's exceptions: engine failures, translated from httpx at the boundary."""

from __future__ import annotations

from migserve_shared.errors import ErrorCode, MigserveError


class EngineError(MigserveError):
    """The engine did not produce a complete stream.

    ``retryable`` says whether another instance could serve the job when no
    token was sent yet (the engine was down, loading, overloaded, or broke off);
    a request the engine rejected (4xx) fails the same way everywhere.
    """

    code = ErrorCode.ENGINE_FAILED
    retryable: bool = True


class EngineUnavailableError(EngineError):
    """The engine could not be reached or answered 5xx/429 (loading, overloaded)."""

    code = ErrorCode.ENGINE_UNAVAILABLE


class EngineBrokeError(EngineError):
    """The stream broke off: connection lost, idle too long, or ended without an end."""


class EngineRejectedError(EngineError):
    """The engine refused the request (4xx, or an error object inside the stream)."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if status is not None and 400 <= status < 500:
            self.code = ErrorCode.BAD_REQUEST


class SseProtocolError(EngineBrokeError):
    """The engine's event stream is not valid SSE (for example a line too long)."""
