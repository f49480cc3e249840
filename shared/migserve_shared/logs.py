"""Logging configured once per process: JSON lines carrying the trace id and model.

Set the context for a unit of work with ``log_context(trace_id=..., model=...)``;
every line logged inside it carries those fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

_EMPTY: dict[str, str] = {}
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "migserve_log_context", default=_EMPTY
)

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (trace_id, model, instance, ...) to every log line inside."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_trace_id() -> str:
    return _context.get().get("trace_id", "")


_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*):[^/@\s]+@")
_NATS_URL_TOKEN = re.compile(r"(\b(?:nats|tls|ws|wss)://)[^/@\s:]+@")


def redact_secrets(text: str) -> str:
    """``text`` with the password (or token) of every URL in it replaced by ``***``.

    A last line of defence: settings keep credentials out of URLs already
    (``env.nats_settings``), but a URL may still reach a message or a traceback.
    """
    return _NATS_URL_TOKEN.sub(r"\1***@", _URL_PASSWORD.sub(r"\1:***@", text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": redact_secrets(record.getMessage()),
        }
        out.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = redact_secrets(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = redact_secrets(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the context appended, for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
        ctx = " ".join(f"{k}={v}" for k, v in _context.get().items())
        line = base + record.getMessage() + (f" [{ctx}]" if ctx else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_secrets(line)


def configure_logging(service: str, *, level: str = "INFO", json_lines: bool = True) -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
