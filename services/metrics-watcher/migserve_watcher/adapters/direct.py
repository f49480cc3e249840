"""The ``direct`` metrics source: scrape engines' and bridges' /metrics and
difference the counters over the window (``core.tpot``).

State that a restart loses is only the counter history of the last window:
after a restart the first rounds say "unknown" (tpot None) until two scrapes
exist, exactly as a fresh Prometheus would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import httpx
from migserve_shared.messages import InstanceRecord, ModelSpec, SloEvidence

from migserve_watcher.adapters.exposition import (
    BRIDGE,
    ENGINE_SERIES,
    ExpositionError,
    SeriesNames,
    parse_sample,
)
from migserve_watcher.adapters.scrape import ScrapeError, metrics_url, scrape
from migserve_watcher.core.tpot import (
    History,
    InstanceWindow,
    Sample,
    add_sample,
    instance_window,
    model_evidence,
)
from migserve_watcher.metrics import WatcherMetrics

log = logging.getLogger(__name__)

#: (instance id, "engine" | "bridge")
SourceKey = tuple[str, str]


class DirectSource:
    name = "direct"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        metrics: WatcherMetrics,
        window_s: float,
        scrape_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._window_s = window_s
        self._timeout_s = scrape_timeout_s
        self._clock = clock
        self._histories: dict[SourceKey, History] = {}

    async def collect(
        self, specs: Mapping[str, ModelSpec], records: Sequence[InstanceRecord]
    ) -> dict[str, SloEvidence]:
        scraped = await asyncio.gather(*(self._scrape_instance(r) for r in records))
        fresh: set[SourceKey] = set()
        for samples in scraped:
            for key, sample in samples:
                self._histories[key] = add_sample(
                    self._histories.get(key, ()), sample, window_s=self._window_s
                )
                fresh.add(key)
        live = {r.instance_id for r in records}
        for key in [k for k in self._histories if k[0] not in live]:
            del self._histories[key]
        by_model: dict[str, list[InstanceRecord]] = defaultdict(list)
        for r in records:
            by_model[r.model_id].append(r)
        out: dict[str, SloEvidence] = {}
        for model_id, recs in sorted(by_model.items()):
            spec = specs.get(model_id)
            if spec is None:
                log.debug("instances of unregistered model %s not reported", model_id)
                continue
            out[model_id] = self._evidence(spec, recs, fresh)
        return out

    def _evidence(
        self, spec: ModelSpec, records: list[InstanceRecord], fresh: set[SourceKey]
    ) -> SloEvidence:
        windows: list[InstanceWindow] = []
        engines: dict[str, str] = {}
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
            engines[r.instance_id] = r.engine
        return model_evidence(
            windows,
            slo_ms=spec.tpot_slo_ms,
            source=self.name,
            query=direct_query(windows, engines, self._window_s),
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
                text = await scrape(self._http, url, timeout_s=self._timeout_s)
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


def direct_query(windows: list[InstanceWindow], engines: dict[str, str], window_s: float) -> str:
    """What the direct source computed, in PromQL terms, for the evidence."""
    parts = set()
    for w in windows:
        if w.source == "engine":
            names = ENGINE_SERIES[engines[w.instance_id]]
            parts.add(f"{names.latency_sum[0]}/{names.latency_count[0]}")
        elif w.source == "bridge":
            parts.add(f"{BRIDGE.latency_sum[0]}/{BRIDGE.latency_count[0]}")
    series = ", ".join(sorted(parts)) or "none"
    return f"direct scrape: increase(sum)/increase(count) over {window_s:g}s of {series}"
