"""The metrics watcher: every interval, scrape each ready instance's engine (and
bridge) /metrics, difference the counters over the window, and publish one
``metrics.snapshot`` event per model that has ready instances.

State that a restart loses is only the counter history of the last window:
after a restart the first snapshots say "unknown" (tpot None) until two
scrapes exist, exactly as a fresh Prometheus would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import httpx
from migserve_shared import subjects
from migserve_shared.bus import Buckets, EventPublisher, ensure_jetstream, kv_values, open_buckets
from migserve_shared.errors import BadMessageError
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    InstanceRecord,
    MetricsSnapshot,
    ModelSpec,
    decode_instance,
    decode_model_spec,
)
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from migserve_watcher.adapters.exposition import (
    BRIDGE,
    ENGINE_SERIES,
    ExpositionError,
    SeriesNames,
    parse_sample,
)
from migserve_watcher.adapters.scrape import ScrapeError, metrics_url, scrape
from migserve_watcher.core import History, Sample, add_sample, instance_window, model_evidence
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
#: (instance id, "engine" | "bridge")
SourceKey = tuple[str, str]


class Watcher:
    def __init__(
        self,
        *,
        settings: WatcherSettings,
        nc: NATS,
        http: httpx.AsyncClient,
        metrics: WatcherMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._http = http
        self._metrics = metrics
        self._clock = clock
        self._histories: dict[SourceKey, History] = {}
        self._reported_bad: set[tuple[str, str, int]] = set()

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
                await self.poll_once(buckets, publisher)
            except Exception as exc:
                self._metrics.errors.inc()
                log.warning("poll failed; trying again next interval: %s", exc, exc_info=True)
            now = self._clock()
            next_at = max(next_at + interval, now)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - now)

    async def poll_once(self, buckets: Buckets, publisher: EventPublisher) -> None:
        """One round: read the registry and instances, scrape, publish snapshots."""
        specs = {
            s.model_id: s
            for s in await self._read(buckets.models, subjects.KV_MODELS, decode_model_spec)
        }
        records = [
            r
            for r in await self._read(buckets.instances, subjects.KV_INSTANCES, decode_instance)
            if r.state == "ready"
        ]
        scraped = await asyncio.gather(*(self._scrape_instance(r) for r in records))
        fresh: set[SourceKey] = set()
        for samples in scraped:
            for key, sample in samples:
                self._histories[key] = add_sample(
                    self._histories.get(key, ()), sample, window_s=self._settings.window_s
                )
                fresh.add(key)
        live = {r.instance_id for r in records}
        for key in [k for k in self._histories if k[0] not in live]:
            del self._histories[key]
        by_model: dict[str, list[InstanceRecord]] = defaultdict(list)
        for r in records:
            by_model[r.model_id].append(r)
        for model_id, recs in sorted(by_model.items()):
            spec = specs.get(model_id)
            if spec is None:
                log.debug("instances of unregistered model %s not reported", model_id)
                continue
            await self._publish(spec, recs, fresh, publisher)

    async def _publish(
        self,
        spec: ModelSpec,
        records: list[InstanceRecord],
        fresh: set[SourceKey],
        publisher: EventPublisher,
    ) -> None:
        windows = []
        for r in records:
            engine_key, bridge_key = (r.instance_id, "engine"), (r.instance_id, "bridge")
            if engine_key not in fresh and bridge_key not in fresh:
                continue  # not scraped this round: its numbers would be stale
            windows.append(
                instance_window(
                    r.instance_id,
                    self._histories.get(engine_key) if engine_key in fresh else None,
                    self._histories.get(bridge_key) if bridge_key in fresh else None,
                )
            )
        evidence = model_evidence(windows, slo_ms=spec.tpot_slo_ms, source="direct")
        with log_context(model=spec.model_id):
            await publisher.publish(MetricsSnapshot(model_id=spec.model_id, evidence=evidence))
            self._metrics.snapshots.inc()
            log.debug(
                "snapshot: tpot %s ms over %s s, %d tokens, %d instances",
                evidence.tpot_ms,
                evidence.window_s,
                evidence.tokens,
                len(evidence.instances),
            )

    async def _scrape_instance(self, record: InstanceRecord) -> list[tuple[SourceKey, Sample]]:
        out: list[tuple[SourceKey, Sample]] = []
        targets: list[tuple[str, str, SeriesNames]] = []
        if record.engine_url:
            targets.append(("engine", record.engine_url, ENGINE_SERIES[record.engine]))
        if record.bridge_metrics_url:
            targets.append(("bridge", record.bridge_metrics_url, BRIDGE))
        for target, base, names in targets:
            url = metrics_url(base)
            try:
                text = await scrape(self._http, url, timeout_s=self._settings.scrape_timeout_s)
                sample = parse_sample(text, names, at=self._clock())
            except (ScrapeError, ExpositionError) as exc:
                self._metrics.scrapes.labels(target, "error").inc()
                log.warning(
                    "scrape of %s for instance %s failed: %s",
                    target,
                    record.instance_id,
                    exc,
                    extra={"instance": record.instance_id, "url": url},
                )
                continue
            self._metrics.scrapes.labels(target, "ok").inc()
            out.append(((record.instance_id, target), sample))
        return out

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
