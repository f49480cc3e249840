"""The watcher exports each registered model's TPOT SLO from the models bucket of a
real nats-server, and drops a model's series once the model is removed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx
from migserve_cli.nats_server import NatsServer
from migserve_shared import subjects
from migserve_shared.bus import EventPublisher, ensure_jetstream, open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import InstanceRecord, ModelSpec, SloEvidence, encode
from migserve_watcher.app import Watcher
from migserve_watcher.metrics import MODEL_TPOT_SLO, WatcherMetrics
from migserve_watcher.settings import WatcherSettings
from nats.aio.client import Client as NATS


class NoEvidence:
    """A metrics source with nothing to say (no instances are running)."""

    name = "none"

    async def collect(
        self, specs: Mapping[str, ModelSpec], records: Sequence[InstanceRecord]
    ) -> dict[str, SloEvidence]:
        return {}


async def test_slo_gauge_follows_the_models_bucket(nc: NATS, nats_server: NatsServer) -> None:
    js = nc.jetstream()
    await ensure_jetstream(js)
    buckets = await open_buckets(js)
    for model, slo_ms in (("org/fast", 30.0), ("org/slow", 250.0)):
        spec = ModelSpec(model_id=model, memory_mb=1000, tpot_slo_ms=slo_ms)
        await buckets.models.put(subjects.model_key(model), encode(spec))
    await buckets.models.put(subjects.model_key("org/bad"), b"not a model spec")

    metrics = WatcherMetrics()
    settings = WatcherSettings(nats=NatsSettings(url=nats_server.url))
    publisher = EventPublisher(js, source="test")
    async with httpx.AsyncClient() as http:
        watcher = Watcher(settings=settings, nc=nc, http=http, metrics=metrics, source=NoEvidence())
        await watcher.poll_once(buckets, publisher)
        assert metrics.value(MODEL_TPOT_SLO, {"model": "org/fast"}) == 0.03
        assert metrics.value(MODEL_TPOT_SLO, {"model": "org/slow"}) == 0.25
        assert metrics.value(MODEL_TPOT_SLO, {"model": "org/bad"}) is None

        await buckets.models.delete(subjects.model_key("org/slow"))
        await watcher.poll_once(buckets, publisher)
        assert metrics.value(MODEL_TPOT_SLO, {"model": "org/fast"}) == 0.03
        assert metrics.value(MODEL_TPOT_SLO, {"model": "org/slow"}) is None
