"""Subject-safe, injective tokens for ids that may contain '/', '.', ':' and more.

NATS subject tokens may not contain '.', '*', '>' or whitespace, and KV keys
allow only ``[-/_=.a-zA-Z0-9]``. ``encode_token`` maps any string to
``[A-Za-z0-9-_]`` injectively: ASCII letters, digits and '-' stand for
themselves; every other byte of the UTF-8 encoding becomes ``_`` followed by
two lowercase hex digits ('_' itself becomes ``_5f``). ``decode_token``
inverts it, so the mapping is a bijection onto well-formed tokens.

    >>> encode_token("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB_2fSmolLM2-135M-Instruct'
"""

from __future__ import annotations

import re
import uuid

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_TOKEN_RE = re.compile(r"(?:[A-Za-z0-9-]|_[0-9a-f]{2})+")


class InvalidTokenError(ValueError):
    """A string is not a well-formed token produced by ``encode_token``."""


def encode_token(value: str) -> str:
    """Encode ``value`` (non-empty) as a subject- and KV-safe token."""
    if not value:
        raise ValueError("cannot encode an empty id as a subject token")
    out: list[str] = []
    for byte in value.encode("utf-8"):
        out.append(chr(byte) if byte in _PLAIN else f"_{byte:02x}")
    return "".join(out)


def decode_token(token: str) -> str:
    """Invert ``encode_token``; raise ``InvalidTokenError`` on a malformed token."""
    if not _TOKEN_RE.fullmatch(token):
        raise InvalidTokenError(f"not a migserve token: {token!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTokenError(f"token {token!r} does not decode to UTF-8") from exc
    if encode_token(decoded) != token:  # e.g. '_41' where plain 'A' is canonical
        raise InvalidTokenError(f"token {token!r} is not in canonical form")
    return decoded


def new_id(prefix: str = "") -> str:
    """A fresh random id (32 hex digits), optionally prefixed, e.g. ``inst-…``."""
    return f"{prefix}{uuid.uuid4().hex}"


def new_trace_id() -> str:
    """A W3C trace-context trace id: 32 lowercase hex digits."""
    return uuid.uuid4().hex
