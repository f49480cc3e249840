"""migserve's exception tree. Third-party errors are translated at the boundary
(``raise OurError(...) from exc``) and every message names the values involved.

On the wire, errors travel as ``messages.ErrorReply`` with one of the
``ErrorCode`` values; ``MigserveError.code`` maps an exception to that code.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Codes carried by typed error replies and failure events."""

    BAD_REQUEST = "bad_request"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_MODEL = "unknown_model"
    NO_CAPACITY = "no_capacity"
    INSUFFICIENT_RESOURCES = "insufficient_resources"
    IN_USE = "in_use"
    NOT_FOUND = "not_found"
    NOT_SUPPORTED = "not_supported"
    NO_PERMISSION = "no_permission"
    ENGINE_FAILED = "engine_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DRAINING = "draining"
    #: a scaling step is not allowed by the model's policy (max replicas and profile)
    AT_LIMIT = "at_limit"
    #: a swap would take longer than the load it answers is expected to last
    SWAP_TOO_SLOW = "swap_too_slow"
    INTERNAL = "internal"


class MigserveError(Exception):
    """Base of every error migserve raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class ConfigError(MigserveError):
    """A setting from the environment, a flag or a file is missing or invalid."""

    code = ErrorCode.BAD_REQUEST


class BadMessageError(MigserveError):
    """A message from the bus did not decode into its schema."""

    code = ErrorCode.BAD_MESSAGE


class MigError(MigserveError):
    """Base of MIG errors; mirrors NVML's error semantics."""


class InsufficientResourcesError(MigError):
    """The slice does not fit (NVML_ERROR_INSUFFICIENT_RESOURCES, 23)."""

    code = ErrorCode.INSUFFICIENT_RESOURCES


class InUseError(MigError):
    """The slice still has processes on it (NVML_ERROR_IN_USE, 19)."""

    code = ErrorCode.IN_USE


class NotFoundError(MigError):
    """No such GPU, GPU instance or compute instance (NVML_ERROR_NOT_FOUND, 6)."""

    code = ErrorCode.NOT_FOUND


class NotSupportedError(MigError):
    """MIG is off, or the profile is unknown on this GPU (NVML_ERROR_NOT_SUPPORTED, 3)."""

    code = ErrorCode.NOT_SUPPORTED


class NoPermissionError(MigError):
    """The caller may not change MIG slices (NVML_ERROR_NO_PERMISSION, 4)."""

    code = ErrorCode.NO_PERMISSION
