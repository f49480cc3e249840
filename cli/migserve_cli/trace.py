"""`migserve trace`: the event stream, one readable line per event.

Every event carries the trace id of the decision it belongs to, so
``migserve trace <trace-id>`` shows one whole story: demand or violation,
decision, slice, instance ready, drain, slice freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from migserve_shared import subjects
from migserve_shared.bus import connect
from migserve_shared.env import NatsSettings
from migserve_shared.errors import BadMessageError
from migserve_shared.messages import Event, decode_event, event_kind
from nats.js.api import DeliverPolicy

_SKIP = {"event_id", "time", "source", "trace_id", "kind"}


def describe(evt: Event) -> str:
    """One line: time, kind, source, trace id and the fields that matter."""
    stamp = time.strftime("%H:%M:%S", time.localtime(evt.time)) + f".{int(evt.time % 1 * 1000):03d}"
    parts: list[str] = []
    for name in evt.__struct_fields__:
        if name in _SKIP:
            continue
        value = getattr(evt, name)
        if value is False or value in ("", None, [], {}):  # unset flags and empties say nothing
            continue
        if name == "model":
            value = getattr(value, "model_id", value)
        elif name == "node" and not isinstance(value, str):
            value = f"{value.node} ({len(value.gpus)} GPUs)"
        elif name == "evidence":
            tpot = "unknown" if value.tpot_ms is None else f"{value.tpot_ms:.1f}ms"
            value = f"tpot={tpot} slo={value.slo_ms:g}ms in_flight={value.in_flight}"
        parts.append(f"{name}={value}")
    trace = evt.trace_id[:12] if evt.trace_id else "-"
    return f"{stamp} {event_kind(evt):<18} trace={trace:<12} {evt.source:<18} {' '.join(parts)}"


async def follow(
    nats: str | NatsSettings,
    out: Callable[[str], None],
    *,
    trace_id: str | None = None,
    kinds: list[str] | None = None,
    from_start: bool = True,
    follow_s: float | None = None,
    skip_snapshots: bool = True,
) -> int:
    """Print events (all so far, then live) until ``follow_s`` passes; return the count."""
    settings = NatsSettings(url=nats, name="migserve-trace") if isinstance(nats, str) else nats
    nc = await connect(settings, connect_timeout=3)
    count = 0
    try:
        js = nc.jetstream()
        policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
        sub = await js.subscribe(
            subjects.EVENTS_WILDCARD, ordered_consumer=True, deliver_policy=policy
        )
        deadline = None if follow_s is None else time.monotonic() + follow_s
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.01, min(1.0, deadline - time.monotonic()))
            try:
                msg = await sub.next_msg(timeout=wait)
            except TimeoutError:
                continue
            with contextlib.suppress(BadMessageError):
                evt = decode_event(msg.data)
                if trace_id and not evt.trace_id.startswith(trace_id):
                    continue
                if kinds and event_kind(evt) not in kinds:
                    continue
                if skip_snapshots and not kinds and event_kind(evt) == "metrics.snapshot":
                    continue
                out(describe(evt))
                count += 1
        await sub.unsubscribe()
    except asyncio.CancelledError:
        pass
    finally:
        await nc.close()
    return count


async def read_events(
    nats: str | NatsSettings,
    *,
    start: float = 0.0,
    end: float = float("inf"),
    kinds: Iterable[str] = (),
    idle_s: float = 0.5,
) -> list[Event]:
    """The events stored so far whose time lies in [``start``, ``end``], of ``kinds``
    if given (reads the stream until nothing new comes for ``idle_s``)."""
    wanted = set(kinds)
    settings = NatsSettings(url=nats, name="migserve-events") if isinstance(nats, str) else nats
    nc = await connect(settings, connect_timeout=3)
    found: list[Event] = []
    try:
        sub = await nc.jetstream().subscribe(
            subjects.EVENTS_WILDCARD, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except TimeoutError:
                break
            with contextlib.suppress(BadMessageError):
                evt = decode_event(msg.data)
                if start <= evt.time <= end and (not wanted or event_kind(evt) in wanted):
                    found.append(evt)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found
