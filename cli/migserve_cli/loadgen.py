"""A load generator: OpenAI chat completions at a fixed concurrency for a duration.

``run_load`` runs ``concurrency`` clients, each sending one request after the
other (streaming by default) until ``duration_s`` has passed or ``stop`` is
set; requests already sent then finish. Every request is recorded (start, end,
HTTP status, the reason it failed, time to first token, tokens); the report
sums them up. Used by ``migserve load``, the rollout and chaos tests, and the
control-loop test.

Failure reasons (the keys of ``LoadReport.errors``):

- ``connect_error`` / ``connect_timeout``: no connection (nothing listens).
- ``disconnected_before_response``: the server closed or reset the connection
  before any byte of the response arrived (for example a killed gateway).
- ``disconnected_mid_stream``: the connection broke after the response began.
- ``timeout``: no byte for ``timeout_s`` (or no free connection in time).
- ``http_<status>``: a response other than 200 (the body's error is kept in
  the record's ``detail``).
- ``stream_error``: the stream ended with an ``error`` event.
- ``incomplete_stream``: the stream ended without a finish reason or ``[DONE]``.

With ``retry_connect=True`` a request that failed with one of the first three
reasons (no byte of the response received) is sent once more, as a client
behind a Kubernetes Service would (the OpenAI client retries those too). Such
retries are counted apart, in ``retries`` and ``retry_reasons``; the request
counts as ok or failed by its second attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field

import httpx

#: reasons that mean no byte of the response arrived: safe to send again
RETRIABLE = frozenset({"connect_error", "connect_timeout", "disconnected_before_response"})

DEFAULT_PROMPT = "Explain what a GPU is in one paragraph."


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the client saw it; times are wall-clock seconds (``time.time()``)."""

    start: float
    end: float
    status: int | None
    error: str | None = None
    instance: str | None = None
    detail: str = ""
    ttft_ms: float | None = None
    tokens: int = 0
    attempts: int = 1
    first_error: str | None = None
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class LoadReport:
    """What a load run saw; ``errors`` maps a failure reason to its count."""

    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    tokens: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def duration_s(self) -> float:
        return max(self.ended - self.started, 0.0)

    def add(self, rec: RequestRecord, tpot_ms: float | None) -> None:
        self.records.append(rec)
        if rec.first_error is not None:
            self.retries += 1
            self.retry_reasons[rec.first_error] = self.retry_reasons.get(rec.first_error, 0) + 1
        if rec.error is None:
            self.ok += 1
            self.tokens += rec.tokens
            if rec.ttft_ms is not None:
                self.ttft_ms.append(rec.ttft_ms)
            if tpot_ms is not None:
                self.tpot_ms.append(tpot_ms)
        else:
            self.failed += 1
            self.errors[rec.error] = self.errors.get(rec.error, 0) + 1

    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if r.error is not None]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def format_report(report: LoadReport) -> str:
    """A small table: counts, rates, TTFT and TPOT percentiles, failure reasons."""
    dur = report.duration_s or math.nan
    rows = [
        ("requests", f"{report.total}"),
        ("ok", f"{report.ok}"),
        ("failed", f"{report.failed}"),
        ("retried (connection, counted apart)", f"{report.retries}"),
        ("duration s", f"{report.duration_s:.1f}"),
        ("requests/s", f"{report.ok / dur:.2f}"),
        ("tokens/s", f"{report.tokens / dur:.1f}"),
    ]
    for name, values in (("TTFT ms", report.ttft_ms), ("TPOT ms", report.tpot_ms)):
        p50, p95, p99 = (percentile(values, q) for q in (0.5, 0.95, 0.99))
        rows.append((f"{name} p50/p95/p99", f"{p50:.1f} / {p95:.1f} / {p99:.1f}"))
    for reason, count in sorted(report.errors.items()):
        rows.append((f"failed: {reason}", str(count)))
    for reason, count in sorted(report.retry_reasons.items()):
        rows.append((f"retried: {reason}", str(count)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass(slots=True)
class _Attempt:
    status: int | None = None
    error: str | None = None
    detail: str = ""
    instance: str | None = None
    request_id: str | None = None
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    finished: bool = False


def _chat_body(model: str, *, max_tokens: int, stream: bool, prompt: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def _stream_event(att: _Attempt, data: str, at: float) -> bool:
    """Account one SSE ``data:`` payload; True when the stream is complete."""
    if data == "[DONE]":
        return True
    try:
        event = json.loads(data)
    except ValueError:
        att.error, att.detail = "stream_error", f"not JSON: {data[:200]}"
        return True
    if not isinstance(event, dict):
        att.error, att.detail = "stream_error", f"not an object: {data[:200]}"
        return True
    if "error" in event:
        att.error, att.detail = "stream_error", json.dumps(event["error"])[:500]
        return True
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and delta.get("content"):
            att.tokens += 1
            if att.first_token is None:
                att.first_token = at
            att.last_token = at
        if choice.get("finish_reason"):
            att.finished = True
    return False


async def _read_stream(resp: httpx.Response, att: _Attempt) -> None:
    done = False
    # read to the end of the body (the server ends it after [DONE]): leaving
    # httpx's nested line iterators early would leave them for the GC to close
    async for line in resp.aiter_lines():
        if not done and line.startswith("data:"):
            done = _stream_event(att, line[5:].strip(), time.perf_counter())
    if att.error is None and not done and not att.finished:
        att.error = "incomplete_stream"


async def _read_whole(resp: httpx.Response, att: _Attempt) -> None:
    body = await resp.aread()
    att.first_token = att.last_token = time.perf_counter()
    try:
        data = json.loads(body)
        att.tokens = int(data["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        att.error, att.detail = "incomplete_stream", body[:200].decode("utf-8", "replace")


async def _attempt(
    client: httpx.AsyncClient, url: str, body: dict[str, object], stream: bool
) -> _Attempt:
    att = _Attempt()
    got_response = False
    try:
        async with client.stream("POST", url, json=body) as resp:
            got_response = True
            att.status = resp.status_code
            att.instance = resp.headers.get("x-migserve-instance")
            att.request_id = resp.headers.get("x-request-id")
            if resp.status_code != 200:
                att.error = f"http_{resp.status_code}"
                att.detail = (await resp.aread())[:500].decode("utf-8", "replace")
            elif stream:
                await _read_stream(resp, att)
            else:
                await _read_whole(resp, att)
    except httpx.ConnectTimeout as exc:
        att.error, att.detail = "connect_timeout", repr(exc)
    except httpx.ConnectError as exc:
        att.error, att.detail = "connect_error", repr(exc)
    except httpx.TimeoutException as exc:
        att.error, att.detail = "timeout", repr(exc)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        broke_early = not got_response
        att.error = "disconnected_before_response" if broke_early else "disconnected_mid_stream"
        att.detail = repr(exc)
    return att


async def _one_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, object],
    *,
    stream: bool,
    retry_connect: bool,
) -> tuple[RequestRecord, float | None]:
    start_wall, t0 = time.time(), time.perf_counter()
    att = await _attempt(client, url, body, stream)
    attempts, first_error = 1, None
    if retry_connect and att.error in RETRIABLE:
        first_error = att.error
        attempts, t0 = 2, time.perf_counter()  # TTFT of the attempt that answered
        att = await _attempt(client, url, body, stream)
    end_wall = time.time()
    ttft = (att.first_token - t0) * 1000 if att.first_token is not None else None
    tpot = None
    if stream and att.tokens > 1 and att.first_token is not None and att.last_token is not None:
        tpot = (att.last_token - att.first_token) * 1000 / (att.tokens - 1)
    rec = RequestRecord(
        start=start_wall,
        end=end_wall,
        status=att.status,
        error=att.error,
        instance=att.instance,
        detail=att.detail if att.error else "",
        ttft_ms=ttft,
        tokens=att.tokens,
        attempts=attempts,
        first_error=first_error,
        request_id=att.request_id,
    )
    return rec, tpot


async def run_load(
    base_url: str,
    model: str,
    *,
    concurrency: int,
    duration_s: float,
    max_tokens: int = 32,
    stream: bool = True,
    api_key: str | None = None,
    stop: asyncio.Event | None = None,
    timeout_s: float = 60.0,
    retry_connect: bool = False,
    prompt: str = DEFAULT_PROMPT,
) -> LoadReport:
    """Send chat completions from ``concurrency`` clients for ``duration_s`` seconds.

    No new request starts after ``duration_s`` or once ``stop`` is set; those
    in flight finish (or time out after ``timeout_s`` without a byte).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    stop = stop if stop is not None else asyncio.Event()
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = _chat_body(model, max_tokens=max_tokens, stream=stream, prompt=prompt)
    url = base_url.rstrip("/") + "/v1/chat/completions"
    report = LoadReport(started=time.time())
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(
        headers=headers, timeout=httpx.Timeout(timeout_s), limits=limits
    ) as client:

        async def client_loop() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                rec, tpot = await _one_request(
                    client, url, body, stream=stream, retry_connect=retry_connect
                )
                report.add(rec, tpot)
                if rec.error is not None and rec.status is None:
                    # no server answered: do not spin; a real client backs off too
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)

        async with asyncio.TaskGroup() as tg:
            for i in range(concurrency):
                tg.create_task(client_loop(), name=f"load-client-{i}")
    report.ended = time.time()
    return report
