"""Trace and request ids: W3C ``traceparent`` in, ``X-Request-ID`` in and out.

A valid incoming ``traceparent`` keeps its trace id (the request's story in
the event stream then joins the caller's trace); otherwise a new trace starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from migserve_shared.ids import new_id, new_trace_id

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Ids that travel with one HTTP request into its job and events."""

    trace_id: str
    traceparent: str
    request_id: str


def parse_traceparent(header: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header, else None."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None
    return trace_id


def request_context(traceparent: str | None, request_id: str | None) -> RequestContext:
    """Ids for a request: the caller's trace and request id when valid, else new ones."""
    trace_id = parse_traceparent(traceparent)
    if trace_id is None or traceparent is None:
        trace_id = new_trace_id()
        parent = f"00-{trace_id}-{new_id()[:16]}-01"
    else:
        parent = traceparent.strip().lower()
    if request_id is None or not _REQUEST_ID.match(request_id):
        request_id = new_id("req-")
    return RequestContext(trace_id=trace_id, traceparent=parent, request_id=request_id)
