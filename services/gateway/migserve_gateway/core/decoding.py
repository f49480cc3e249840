"""Decoding request bodies with msgspec, every failure an ApiError(400) naming the field."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from migserve_gateway.core.errors import ApiError, bad_request

T = TypeVar("T")

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")


def _param(path: str, field: str | None = None) -> str | None:
    path = path.lstrip(".")
    if field:
        path = f"{path}.{field}" if path else field
    return path or None


def explain_validation_error(text: str) -> ApiError:
    """Turn msgspec's validation message into an error that names the field."""
    match = _AT.match(text)
    what, path = (match["what"], match["path"] or "") if match else (text, "")
    missing = _MISSING.match(what)
    if missing:
        param = _param(path, missing["field"])
        return bad_request(
            f"Missing required parameter: '{param}'", reason="missing_field", param=param
        )
    unknown = _UNKNOWN.match(what)
    if unknown:
        param = _param(path, unknown["field"])
        return bad_request(f"Unknown parameter: '{param}'", reason="unknown_field", param=param)
    expected = _EXPECTED.match(what)
    param = _param(path)
    where = f"'{param}'" if param else "the request body"
    if expected:
        want = expected["want"].replace(" | null", " or null").replace(" | ", " or ")
        return bad_request(
            f"Invalid type for {where}: expected {want}, got {expected['got']}",
            reason="wrong_type",
            param=param,
        )
    return bad_request(f"Invalid value for {where}: {what}", reason="invalid_value", param=param)


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a JSON body; ApiError(400) for bad UTF-8, bad JSON or a schema mismatch."""
    try:
        return decoder.decode(body)
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"The request body is not valid UTF-8: {exc.reason} at byte {exc.start}",
            reason="non_utf8",
        ) from exc
    except msgspec.ValidationError as exc:
        raise explain_validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise bad_request(
            f"The request body is not valid JSON: {exc}", reason="malformed_json"
        ) from exc
