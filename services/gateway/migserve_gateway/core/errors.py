"""Errors the gateway answers with, shaped like OpenAI's.

Every error a client sees is an :class:`ApiError`: an HTTP status plus the
body ``{"error": {"message", "type", "param", "code"}}``. ``reason`` is the
label of ``migserve_gateway_bad_requests_total`` for client errors.
"""

from __future__ import annotations

from typing import Final

import msgspec
from migserve_shared.errors import ErrorCode

INVALID_REQUEST: Final = "invalid_request_error"
SERVER_ERROR: Final = "server_error"
UNAVAILABLE: Final = "service_unavailable_error"
TIMEOUT: Final = "timeout_error"


class ApiError(Exception):
    """An answer other than success, with everything the client and the metrics need."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.message = message
        self.reason = reason
        self.type = type or (INVALID_REQUEST if status < 500 else SERVER_ERROR)
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, reason={self.reason!r})"


class _ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(err: ApiError) -> bytes:
    """The JSON body of an error answer."""
    detail = _ErrorDetail(message=err.message, type=err.type, param=err.param, code=err.code)
    return _encoder.encode(_ErrorBody(error=detail))


def bad_request(message: str, *, reason: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, reason=reason, param=param, code=reason)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist; GET /v1/models lists the registered models",
        reason="unknown_model",
        param="model",
        code="model_not_found",
    )


def no_instance_ready(model: str, waited_s: float) -> ApiError:
    return ApiError(
        503,
        f"no instance of {model} became ready within {waited_s:g} s; try again later",
        reason="cold_start_timeout",
        type=UNAVAILABLE,
        code="model_not_ready",
    )


def queue_timeout(model: str, waited_s: float) -> ApiError:
    return ApiError(
        503,
        f"no instance of {model} took the request within {waited_s:g} s (all busy); "
        "try again later",
        reason="queue_timeout",
        type=UNAVAILABLE,
        code="queue_timeout",
    )


def stream_stalled(model: str, idle_s: float) -> ApiError:
    return ApiError(
        504,
        f"the instance serving {model} sent nothing for {idle_s:g} s; the request was cancelled",
        reason="token_idle_timeout",
        type=TIMEOUT,
        code="timeout",
    )


def jobs_unavailable(detail: str) -> ApiError:
    return ApiError(
        503,
        f"the job queue is unavailable: {detail}",
        reason="jobs_unavailable",
        type=UNAVAILABLE,
        code="jobs_unavailable",
    )


#: HTTP status for a typed job error reply that ends a request before its first token
_JOB_ERROR_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_SUPPORTED: 400,
    ErrorCode.NO_CAPACITY: 503,
    ErrorCode.INSUFFICIENT_RESOURCES: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.DRAINING: 503,
    ErrorCode.CANCELLED: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.ENGINE_FAILED: 502,
    ErrorCode.BAD_MESSAGE: 502,
    ErrorCode.INTERNAL: 502,
}


def from_job_error(code: ErrorCode, message: str, model: str) -> ApiError:
    """The answer for a typed error reply from the instance serving ``model``."""
    status = _JOB_ERROR_STATUS.get(code, 502)
    kind = {503: UNAVAILABLE, 504: TIMEOUT}.get(status)
    return ApiError(
        status,
        f"{model}: {message}" if status >= 500 else message,
        reason=f"job_{code.value}",
        type=kind,
        code=code.value,
    )
