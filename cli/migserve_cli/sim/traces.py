"""Request traces for the simulator: the Azure LLM inference CSV and Mooncake JSONL.

Formats (both read-only; see ../shared/traces/README.md):

- Azure (``.csv``): a header ``TIMESTAMP,ContextTokens,GeneratedTokens``, one
  request a row, ``TIMESTAMP`` an ISO date-time (``2023-11-16 18:17:03.9799600``).
- Mooncake (``.jsonl``): one JSON object a line with ``timestamp``
  (milliseconds), ``input_length`` and ``output_length``; other keys
  (``hash_ids``) are ignored.

The format follows the extension; a file with another extension is sniffed
(a first character ``{`` means JSONL). Every row is validated; the first bad
one raises ``TraceError`` naming the file, the line and the value.

Requests are spread over the models deterministically: round-robin in arrival
order (request i goes to model i mod M), so every model sees the trace's
shape at 1/M of its rate.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from migserve_shared.errors import ConfigError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
#: a prompt or output longer than this is surely a corrupt row
MAX_TOKENS = 10_000_000


class TraceError(ConfigError):
    """A trace file is missing, empty or has a row that is not a request."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: when it arrives (seconds after the trace's first), its sizes, its model."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    model: int = 0


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace's requests in arrival order, and what it was read from."""

    source: str
    format: str
    requests: tuple[TraceRequest, ...]

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0


def _count(value: object, what: str, where: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise TraceError(f"{where}: {what} {value!r} is not an integer") from None
    if isinstance(value, bool) or not 0 <= number <= MAX_TOKENS:
        raise TraceError(f"{where}: {what} {value!r} must be an integer in 0..{MAX_TOKENS}")
    return number


def _azure_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[float, int, int]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise TraceError(f"{path}: empty file (expected the header {','.join(AZURE_COLUMNS)})")
    names = [h.strip() for h in header]
    missing = [c for c in AZURE_COLUMNS if c not in names]
    if missing:
        raise TraceError(
            f"{path}: header {','.join(names)!r} lacks {', '.join(missing)} "
            f"(an Azure trace has {','.join(AZURE_COLUMNS)})"
        )
    ts_col, in_col, out_col = (names.index(c) for c in AZURE_COLUMNS)
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{line_no}"
        if len(row) < len(names):
            raise TraceError(f"{where}: {len(row)} columns, the header has {len(names)}")
        try:
            stamp = datetime.fromisoformat(row[ts_col].strip()).timestamp()
        except ValueError:
            raise TraceError(f"{where}: TIMESTAMP {row[ts_col]!r} is not a date-time") from None
        yield (
            stamp,
            _count(row[in_col], "ContextTokens", where),
            _count(row[out_col], "GeneratedTokens", where),
        )


def _mooncake_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[float, int, int]]:
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise TraceError(f"{where}: a JSON object is expected, got {type(obj).__name__}")
        missing = [k for k in MOONCAKE_KEYS if k not in obj]
        if missing:
            raise TraceError(f"{where}: missing {', '.join(missing)}")
        stamp = obj["timestamp"]
        if (
            isinstance(stamp, bool)
            or not isinstance(stamp, int | float)
            or not math.isfinite(stamp)
        ):
            raise TraceError(f"{where}: timestamp {stamp!r} is not a number of milliseconds")
        yield (
            float(stamp) / 1000.0,
            _count(obj["input_length"], "input_length", where),
            _count(obj["output_length"], "output_length", where),
        )


def detect_format(path: Path, first_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "azure"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "mooncake"
    return "mooncake" if first_line.lstrip().startswith("{") else "azure"


def load_trace(
    path: Path,
    *,
    models: int = 1,
    duration_s: float | None = None,
    speedup: float = 1.0,
) -> Trace:
    """Read a trace, shift it to start at 0, keep ``duration_s`` of it (after the
    ``speedup``: arrival times are divided by it) and spread it over ``models``."""
    if models < 1:
        raise TraceError(f"models must be at least 1, got {models}")
    if not speedup > 0 or not math.isfinite(speedup):
        raise TraceError(f"speedup must be a finite number > 0, got {speedup}")
    if duration_s is not None and not duration_s > 0:
        raise TraceError(f"duration must be > 0 seconds, got {duration_s}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise TraceError(f"{path}: the trace is empty")
    fmt = detect_format(path, first)
    rows = list(_azure_rows(path, lines) if fmt == "azure" else _mooncake_rows(path, lines))
    if not rows:
        raise TraceError(f"{path}: the trace holds no request")
    rows.sort(key=lambda r: r[0])
    origin = rows[0][0]
    requests: list[TraceRequest] = []
    for stamp, prompt, output in rows:
        at = (stamp - origin) / speedup
        if duration_s is not None and at > duration_s:
            break
        requests.append(TraceRequest(at, prompt, output, len(requests) % models))
    return Trace(source=str(path), format=fmt, requests=tuple(requests))


def synthetic_trace(
    rate_per_s: Iterable[tuple[float, float]],
    *,
    prompt_tokens: int = 512,
    output_tokens: int = 64,
    models: int = 1,
) -> Trace:
    """Evenly spaced requests: ``(seconds, requests per second)`` phases one after another.

    For tests and demos (a load step is ``[(60, 1), (120, 20)]``).
    """
    requests: list[TraceRequest] = []
    start = 0.0
    for seconds, rate in rate_per_s:
        if rate > 0:
            count = int(seconds * rate)
            for k in range(count):
                i = len(requests)
                requests.append(
                    TraceRequest(start + k / rate, prompt_tokens, output_tokens, i % models)
                )
        start += seconds
    return Trace(source="synthetic", format="synthetic", requests=tuple(requests))
