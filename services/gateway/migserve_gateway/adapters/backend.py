"""What the HTTP app needs from the outside world, bundled; and its NATS build.

``Backend`` is the seam between the app and I/O: the job client, the model
registry and the live view, plus the named loops that keep the view current.
``open_nats_backend`` connects, prepares JetStream, loads the view and hands
every resource to the caller's exit stack (NATS drains on the way out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from migserve_gateway.adapters.jobs import JobClient, NatsJobClient
from migserve_gateway.adapters.registry import KvModelRegistry, ModelRegistry
from migserve_gateway.adapters.watch import ViewFeeder, load
from migserve_gateway.core.view import LiveView
from migserve_gateway.metrics import GatewayMetrics
from migserve_gateway.settings import GatewaySettings
from migserve_shared.bus import (
    EventPublisher,
    ReplyRouter,
    connect,
    drain_quietly,
    ensure_jetstream,
    follow_bucket,
    open_buckets,
)

log = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Backend:
    jobs: JobClient
    registry: ModelRegistry
    view: LiveView
    #: (name, coroutine function) pairs to run in the service's task group
    loops: tuple[tuple[str, Loop], ...] = ()


async def open_nats_backend(
    settings: GatewaySettings, metrics: GatewayMetrics, stack: AsyncExitStack
) -> Backend:
    """Connect to NATS and build the backend; ``stack`` closes everything."""
    nc = await connect(settings.nats)
    stack.push_async_callback(drain_quietly, nc)
    js = nc.jetstream()
    await ensure_jetstream(js, replicas=settings.nats.js_replicas)
    buckets = await open_buckets(js)
    events = EventPublisher(js, source=settings.gateway_id)
    router = ReplyRouter(nc)
    await router.start()
    stack.push_async_callback(router.stop)

    view = LiveView()
    feeder = ViewFeeder(view, metrics)
    await load(buckets.models, feeder.model)
    await load(buckets.instances, feeder.instance)
    log.info(
        "gateway view loaded: %d models, ready instances %s",
        len(view.models()),
        view.ready_models(),
    )

    def reconnects() -> int:
        return int(nc.stats["reconnects"])

    async def follow_models() -> None:
        await follow_bucket(
            buckets.models, lambda k, v, _: feeder.model(k, v), name="models", reconnects=reconnects
        )

    async def follow_instances() -> None:
        await follow_bucket(
            buckets.instances,
            lambda k, v, _: feeder.instance(k, v),
            name="instances",
            reconnects=reconnects,
        )

    return Backend(
        jobs=NatsJobClient(nc=nc, js=js, router=router, events=events),
        registry=KvModelRegistry(kv=buckets.models, events=events, view=view, metrics=metrics),
        view=view,
        loops=(("watch-models", follow_models), ("watch-instances", follow_instances)),
    )
