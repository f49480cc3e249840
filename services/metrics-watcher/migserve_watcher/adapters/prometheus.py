"""The ``prometheus`` metrics source: instant queries against Prometheus' HTTP API.

``GET <url>/api/v1/query?query=...`` with httpx (no client library needed).
Per model, per engine kind of its ready instances, the queries of
``adapters.promql``; the bridge's inter-token histogram gives TPOT, the
engine's own series the cross-check (and TPOT where no bridge series
exists). Prometheus' errors (network, non-200, an error status, a non-vector
result) become ``PrometheusError``; a round whose queries fail reports its
models as unknown rather than as zero.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import httpx
from migserve_shared.messages import InstanceRecord, ModelSpec, SloEvidence

from migserve_watcher.adapters.promql import BY, InstanceQueries, bridge_queries, engine_queries
from migserve_watcher.core.tpot import InstanceWindow, model_evidence
from migserve_watcher.metrics import WatcherMetrics

log = logging.getLogger(__name__)

#: migserve_instance -> value (NaN and missing series left out)
Vector = dict[str, float]


class PrometheusError(Exception):
    """A query could not be answered; the message names the query and the cause."""


async def instant_query(
    http: httpx.AsyncClient, base_url: str, promql: str, *, timeout_s: float
) -> Vector:
    """One instant vector, keyed by ``migserve_instance``; {} for an empty query."""
    if not promql:
        return {}
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        resp = await http.get(url, params={"query": promql}, timeout=timeout_s)
        body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PrometheusError(f"query {promql!r} at {url} failed: {exc}") from exc
    if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise PrometheusError(f"query {promql!r} answered {resp.status_code}: {error}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise PrometheusError(f"query {promql!r} did not return an instant vector")
    out: Vector = {}
    for item in data.get("result", []):
        try:
            instance = str(item["metric"].get(BY, ""))
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"query {promql!r}: malformed sample {item!r}") from exc
        if instance and math.isfinite(value):
            out[instance] = value
    return out


class PrometheusSource:
    name = "prometheus"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        metrics: WatcherMetrics,
        url: str,
        window_s: float,
        timeout_s: float,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._url = url
        self._window_s = window_s
        self._timeout_s = timeout_s

    async def collect(
        self, specs: Mapping[str, ModelSpec], records: Sequence[InstanceRecord]
    ) -> dict[str, SloEvidence]:
        by_model: dict[str, list[InstanceRecord]] = defaultdict(list)
        for r in records:
            if r.model_id in specs:
                by_model[r.model_id].append(r)
        models = sorted(by_model)
        results = await asyncio.gather(
            *(self._model(specs[m], by_model[m]) for m in models), return_exceptions=True
        )
        out: dict[str, SloEvidence] = {}
        for model_id, result in zip(models, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, PrometheusError):
                    raise result
                self._metrics.scrapes.labels("prometheus", "error").inc()
                log.warning("prometheus queries for %s failed: %s", model_id, result)
                result = SloEvidence(slo_ms=specs[model_id].tpot_slo_ms, source=self.name)
            else:
                self._metrics.scrapes.labels("prometheus", "ok").inc()
            out[model_id] = result
        return out

    async def _vectors(self, q: InstanceQueries) -> tuple[Vector, ...]:
        return tuple(
            await asyncio.gather(
                *(
                    instant_query(self._http, self._url, promql, timeout_s=self._timeout_s)
                    for promql in (q.tpot_s, q.tokens, q.requests_per_s, q.in_flight, q.waiting)
                )
            )
        )

    async def _model(self, spec: ModelSpec, records: list[InstanceRecord]) -> SloEvidence:
        model = spec.model_id
        kinds = sorted({r.engine for r in records})
        plans = [engine_queries(model, kind, self._window_s) for kind in kinds]
        plans.append(bridge_queries(model, self._window_s))
        answers = await asyncio.gather(*(self._vectors(q) for q in plans))
        engine_answers, bridge = answers[:-1], answers[-1]
        engine: list[Vector] = [{} for _ in range(5)]
        for vectors in engine_answers:
            for merged, vector in zip(engine, vectors, strict=True):
                merged.update(vector)
        windows = [self._window(r.instance_id, engine, bridge) for r in records]
        query = " ; ".join(q.tpot_s for q in plans)
        return model_evidence(windows, slo_ms=spec.tpot_slo_ms, source=self.name, query=query)

    def _window(
        self, instance: str, engine: Sequence[Vector], bridge: Sequence[Vector]
    ) -> InstanceWindow:
        e_tpot, e_tokens, e_rate, e_flight, e_wait = (v.get(instance) for v in engine)
        b_tpot, b_tokens, _, b_flight, _ = (v.get(instance) for v in bridge)
        if b_tpot is not None:
            tpot_s, tokens, source = b_tpot, b_tokens or e_tokens or 0.0, "bridge"
        elif e_tpot is not None:
            tpot_s, tokens, source = e_tpot, e_tokens or 0.0, "engine"
        else:
            tpot_s, tokens, source = None, e_tokens or b_tokens or 0.0, ""
        return InstanceWindow(
            instance_id=instance,
            span_s=self._window_s,
            tpot_ms=1000.0 * tpot_s if tpot_s is not None and tpot_s >= 0 else None,
            tokens=tokens,
            weight=tokens,
            request_rate=e_rate or 0.0,
            in_flight=next((v for v in (e_flight, b_flight) if v is not None), 0.0),
            waiting=e_wait or 0.0,
            source=source,
            engine_tpot_ms=1000.0 * e_tpot if e_tpot is not None and e_tpot >= 0 else None,
        )
