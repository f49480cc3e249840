"""The metrics watcher: every interval, read the registry and the ready
instances, get one ``SloEvidence`` per model from the metrics source (direct
scrapes or Prometheus), publish it as a ``metrics.snapshot`` event, fold it
into the model's SLO state (``core.slo``) and publish the ``slo.violation`` /
``slo.recovered`` / ``slo.underload`` events that decides. Each registered
model's TPOT SLO is exported as ``migserve_model_tpot_slo_seconds{model}``.

A restart loses the SLO streaks (and, for the direct source, the counter
history of the last window): they start again from the next rounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import httpx
import msgspec
from migserve_shared import subjects
from migserve_shared.bus import Buckets, EventPublisher, ensure_jetstream, kv_values, open_buckets
from migserve_shared.errors import BadMessageError
from migserve_shared.ids import new_trace_id
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    MetricsSnapshot,
    SloEvidence,
    SloRecovered,
    SloUnderload,
    SloViolation,
    decode_instance,
    decode_model_spec,
)
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from migserve_watcher.adapters.direct import DirectSource
from migserve_watcher.adapters.file_sd import write_file_sd
from migserve_watcher.adapters.jobs_queue import jobs_waiting
from migserve_watcher.adapters.prometheus import PrometheusSource
from migserve_watcher.adapters.source import MetricsSource
from migserve_watcher.core.slo import SloDecision, SloState, step
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


class Watcher:
    def __init__(
        self,
        *,
        settings: WatcherSettings,
        nc: NATS,
        http: httpx.AsyncClient,
        metrics: WatcherMetrics,
        clock: Callable[[], float] = time.monotonic,
        source: MetricsSource | None = None,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._metrics = metrics
        self._clock = clock
        self._source = source or build_source(settings, http=http, metrics=metrics, clock=clock)
        self._reported_bad: set[tuple[str, str, int]] = set()
        self._slo: dict[str, SloState] = {}

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Poll every interval until ``stop`` is set."""
        js = self._nc.jetstream()
        await ensure_jetstream(js, replicas=self._settings.nats.js_replicas)
        buckets = await open_buckets(js)
        publisher = EventPublisher(js, source=self._settings.source)
        if ready is not None:
            ready.set()
        interval = self._settings.interval_s
        next_at = self._clock()
        while not stop.is_set():
            try:
                await self.poll_once(buckets, publisher, js=js)
            except Exception as exc:
                self._metrics.errors.inc()
                log.warning("poll failed; trying again next interval: %s", exc, exc_info=True)
            now = self._clock()
            next_at = max(next_at + interval, now)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - now)

    async def poll_once(
        self, buckets: Buckets, publisher: EventPublisher, *, js: JetStreamContext | None = None
    ) -> None:
        """One round: read the registry (and export each model's TPOT SLO) and the
        instances, collect evidence, publish events.

        With ``js``, each model's ``waiting`` adds the jobs JetStream has not yet
        delivered to any of its bridges (its shared consumer's ``num_pending``).
        """
        specs = {
            s.model_id: s
            for s in await self._read(buckets.models, subjects.KV_MODELS, decode_model_spec)
        }
        self._metrics.show_models(specs)
        records = [
            r
            for r in await self._read(buckets.instances, subjects.KV_INSTANCES, decode_instance)
            if r.state == "ready"
        ]
        sd_path = self._settings.file_sd_path
        if sd_path is not None and await asyncio.to_thread(write_file_sd, sd_path, records):
            log.info("file_sd: %d ready instances written to %s", len(records), sd_path)
        for model_id in [m for m in self._slo if m not in specs]:
            del self._slo[model_id]
        for model_id, evidence in sorted((await self._source.collect(specs, records)).items()):
            queued = await jobs_waiting(js, model_id) if js is not None else None
            if queued is not None:
                evidence = msgspec.structs.replace(evidence, waiting=evidence.waiting + queued)
            await self._publish(model_id, evidence, publisher)

    async def _publish(
        self, model_id: str, evidence: SloEvidence, publisher: EventPublisher
    ) -> None:
        with log_context(model=model_id):
            await publisher.publish(MetricsSnapshot(model_id=model_id, evidence=evidence))
            self._metrics.snapshots.inc()
            log.debug(
                "snapshot: tpot %s ms over %s s, %d tokens, %d instances",
                evidence.tpot_ms,
                evidence.window_s,
                evidence.tokens,
                len(evidence.instances),
            )
            state, decision = step(
                self._slo.get(model_id, SloState()),
                evidence,
                now=self._clock(),
                policy=self._settings.slo,
                new_trace=new_trace_id,
            )
            self._slo[model_id] = state
            if decision is not None:
                await self._publish_decision(model_id, decision, publisher)

    async def _publish_decision(
        self, model_id: str, decision: SloDecision, publisher: EventPublisher
    ) -> None:
        event: SloViolation | SloRecovered | SloUnderload
        ev, trace = decision.evidence, decision.trace_id
        if decision.kind == "violation":
            event = SloViolation(model_id=model_id, evidence=ev, trace_id=trace)
        elif decision.kind == "recovered":
            event = SloRecovered(model_id=model_id, evidence=ev, trace_id=trace)
        else:
            event = SloUnderload(model_id=model_id, evidence=ev, trace_id=trace)
        with log_context(trace_id=decision.trace_id):
            await publisher.publish(event)
            self._metrics.slo_events.labels(decision.kind).inc()
            log.info(
                "slo.%s: tpot %s ms (slo %s ms) for %d windows of %s s, instances %s",
                decision.kind,
                ev.tpot_ms,
                ev.slo_ms,
                ev.windows,
                ev.window_s,
                ",".join(ev.instances),
            )

    async def _read(self, kv: KeyValue, bucket: str, decode: Callable[[bytes], T]) -> list[T]:
        """Every value of a bucket that decodes; bad ones are counted, logged once each."""
        out: list[T] = []
        for key, value, revision in await kv_values(kv):
            try:
                out.append(decode(value))
            except BadMessageError as exc:
                self._metrics.bad_values.labels(bucket).inc()
                if (bucket, key, revision) not in self._reported_bad:
                    self._reported_bad.add((bucket, key, revision))
                    log.warning("ignoring bad value of %s/%s: %s", bucket, key, exc)
        return out


def build_source(
    settings: WatcherSettings,
    *,
    http: httpx.AsyncClient,
    metrics: WatcherMetrics,
    clock: Callable[[], float] = time.monotonic,
) -> MetricsSource:
    """The metrics source the settings name, chosen once at start-up."""
    if settings.metrics_source == "prometheus":
        return PrometheusSource(
            http=http,
            metrics=metrics,
            url=settings.prometheus_url,
            window_s=settings.window_s,
            timeout_s=settings.scrape_timeout_s,
        )
    return DirectSource(
        http=http,
        metrics=metrics,
        window_s=settings.window_s,
        scrape_timeout_s=settings.scrape_timeout_s,
        clock=clock,
    )
