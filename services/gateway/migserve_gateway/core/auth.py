"""API keys: which caller a request comes from, and whether it may use a route.

Pure: keys arrive as text (read from files by ``adapters.keyfiles``), are kept
only as SHA-256 digests, and a presented key is compared with every stored
digest in constant time (no early exit), so neither timing nor a repr leaks a
key. A caller is named by ``key_id`` (a digest prefix), never by its key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from migserve_gateway.core.errors import ApiError

#: the caller of every request when auth is off
ANONYMOUS: Final = "anonymous"
PERMISSION_ERROR: Final = "permission_error"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (for limits and logs)."""
    return "key-" + _digest(key).hex()[:12]


def parse_key_lines(text: str) -> list[str]:
    """Keys from a key file: one a line; blank lines and lines starting with ``#`` are skipped."""
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


@dataclass(frozen=True, slots=True, repr=False)
class AuthKeys:
    """The digests of the inference keys and the admin key, or auth turned off."""

    api_digests: tuple[bytes, ...] = ()
    admin_digest: bytes | None = None
    disabled: bool = False

    @classmethod
    def from_keys(cls, api_keys: list[str], admin_key: str | None) -> AuthKeys:
        return cls(
            api_digests=tuple(_digest(k) for k in api_keys),
            admin_digest=None if admin_key is None else _digest(admin_key),
        )

    @classmethod
    def off(cls) -> AuthKeys:
        return cls(disabled=True)

    def __repr__(self) -> str:
        if self.disabled:
            return "AuthKeys(disabled)"
        admin = "set" if self.admin_digest is not None else "unset"
        return f"AuthKeys(<{len(self.api_digests)} api keys>, admin key {admin})"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _matches(digest: bytes, stored: tuple[bytes, ...]) -> bool:
    found = False
    for candidate in stored:  # every key is compared: no early exit
        found |= hmac.compare_digest(digest, candidate)
    return found


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        reason="unauthorized",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def authorize(keys: AuthKeys, authorization: str | None, *, admin: bool) -> str:
    """The caller's key id; ApiError 401 (no or unknown key) or 403 (not admin)."""
    if keys.disabled:
        return ANONYMOUS
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>'"
            if not authorization
            else "Malformed Authorization header: expected 'Bearer <key>'"
        )
    digest = _digest(token)
    is_admin = keys.admin_digest is not None and hmac.compare_digest(digest, keys.admin_digest)
    is_user = _matches(digest, keys.api_digests)
    if not (is_admin or is_user):
        raise unauthorized("Incorrect API key provided")
    if admin and not is_admin:
        raise ApiError(
            403,
            "This API key may not use the admin API; use the admin key",
            reason="forbidden",
            type=PERMISSION_ERROR,
            code="insufficient_permissions",
        )
    return "admin" if is_admin else key_id(token)
