"""The scaler service: keeps the view current, feeds events and ticks to the core,
runs the core's effects, and acts only while it holds the leader lease.

Loops (one task group): a watch per KV bucket (models, nodes, instances,
plans), the lease (``leader.Elector``), and the leadership loop. Every
replica keeps its view current; only the leader consumes events (the
durable consumer is shared, a follower never pulls) and runs ticks. A new
leader reads the plans again, starts with fresh soft memory and resumes the
plans in flight (the core's tick resends their commands). On losing the
lease it stops at once: its consumer and ticker are cancelled and the events
it held unacknowledged go back to the stream. On stop it finishes the event
at hand, hands the rest back, then releases the lease so another replica
takes over without waiting for the ttl.

Decisions run one at a time under a lock, so the core always sees a
consistent view. An event is acknowledged after its effects ran; when
handling fails (NATS unreachable, say) it is negatively acknowledged and
comes back a second later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from migserve_shared import subjects
from migserve_shared.bus import EventPublisher, ensure_jetstream, follow_bucket, open_buckets
from migserve_shared.errors import BadMessageError
from migserve_shared.ids import new_id
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    Demand,
    Event,
    ModelRegistered,
    ModelRemoved,
    NodeInventory,
    decode_event,
    event_kind,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from migserve_scaler.adapters.effects import EffectRunner
from migserve_scaler.adapters.events import ensure_events_consumer
from migserve_scaler.adapters.view_store import WATCHED_BUCKETS, ViewStore
from migserve_scaler.core import IdSource, Memory, Outcome, on_event, on_tick
from migserve_scaler.leader import Elector, NotLeaderError
from migserve_scaler.metrics import ScalerMetrics
from migserve_scaler.settings import ScalerSettings

log = logging.getLogger(__name__)

_BATCH = 32
_FETCH_TIMEOUT_S = 0.5
_MAX_CONFLICT_RETRIES = 3


class Scaler:
    def __init__(
        self,
        *,
        settings: ScalerSettings,
        nc: NATS,
        metrics: ScalerMetrics,
        clock: Callable[[], float] = time.time,
        ids: IdSource = new_id,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._metrics = metrics
        self._clock = clock
        self._ids = ids
        self._policy = dataclasses.replace(settings.policy, plan_timeout_s=settings.plan_timeout_s)
        self._memory = Memory()
        self._lock = asyncio.Lock()
        self._elector: Elector | None = None

    @property
    def leading(self) -> bool:
        """True while this replica holds the lease (and may act)."""
        return self._elector is not None and self._elector.is_leader

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, then give the lease up. ``ready`` is set once
        the view is loaded and this replica either leads with its consumer bound
        or follows a leader it has seen."""
        js = self._nc.jetstream()
        await ensure_jetstream(js, replicas=self._settings.nats.js_replicas)
        buckets = await open_buckets(js)
        store = ViewStore(buckets=buckets, metrics=self._metrics)
        elector = Elector(
            bucket=buckets.leader,
            holder=self._settings.scaler_id,
            ttl_s=self._settings.lease_ttl_s,
            metrics=self._metrics,
        )
        self._elector = elector
        runner = EffectRunner(
            js=js,
            buckets=buckets,
            publisher=EventPublisher(js, source=self._settings.scaler_id),
            store=store,
            metrics=self._metrics,
            may_act=lambda: elector.is_leader,
        )
        loaded = {b: asyncio.Event() for b in WATCHED_BUCKETS}
        led = asyncio.Event()  # set once the leadership loop is over: the lease may go
        async with asyncio.TaskGroup() as tg:
            for bucket in WATCHED_BUCKETS:
                tg.create_task(
                    follow_bucket(
                        store.kv(bucket),
                        store.sink(bucket),
                        name=bucket,
                        reconnects=lambda: int(self._nc.stats["reconnects"]),
                        loaded=loaded[bucket],
                        stop=stop,
                        poll_s=0.25,
                    ),
                    name=f"scaler-watch-{bucket}",
                )
            tg.create_task(elector.run(led), name="scaler-lease")
            tg.create_task(
                self._leadership(
                    js,
                    elector=elector,
                    store=store,
                    runner=runner,
                    loaded=loaded,
                    stop=stop,
                    ready=ready,
                    led=led,
                ),
                name="scaler-leadership",
            )
        await elector.release()

    async def _leadership(
        self,
        js: JetStreamContext,
        *,
        elector: Elector,
        store: ViewStore,
        runner: EffectRunner,
        loaded: dict[str, asyncio.Event],
        stop: asyncio.Event,
        ready: asyncio.Event | None,
        led: asyncio.Event,
    ) -> None:
        """Follow until elected, lead until the lease ends; again until ``stop``."""
        try:
            for event in loaded.values():
                if not await _wait_or_stop(event, stop):
                    return
            log.info(
                "view loaded: %d models, %d nodes, %d instances, %d plans",
                len(store.models),
                len(store.nodes),
                len(store.instances),
                len(store.plans),
            )
            while not stop.is_set():
                if elector.is_leader:
                    await self._lead(
                        js, elector=elector, store=store, runner=runner, stop=stop, ready=ready
                    )
                    continue
                if ready is not None and not ready.is_set():
                    if not await _wait_or_stop(elector.settled, stop):
                        return
                    if elector.is_leader:
                        continue
                    ready.set()  # following: the view is current, the leader is known
                await elector.wait_leader(stop)
        finally:
            led.set()

    async def _lead(
        self,
        js: JetStreamContext,
        *,
        elector: Elector,
        store: ViewStore,
        runner: EffectRunner,
        stop: asyncio.Event,
        ready: asyncio.Event | None,
    ) -> None:
        """One term: rebuild from KV, consume and tick until the lease ends or ``stop``."""
        log.info("leading (term %d): reading plans again, resuming those in flight", elector.term)
        try:
            await store.reload(subjects.KV_PLANS)
        except Exception as exc:  # the watch keeps the plans current anyway
            log.warning("reading the plans again failed: %r", exc)
        self._memory = Memory()
        over, started = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            work = [
                tg.create_task(
                    self._consume(js, store, runner, started, over), name="scaler-events"
                ),
                tg.create_task(self._ticks(store, runner, started, over), name="scaler-ticks"),
            ]
            if ready is not None:
                tg.create_task(_forward(started, ready, over), name="scaler-ready")
            await elector.wait_lost(stop)
            over.set()
            if not stop.is_set():  # the lease ended: stop acting now, mid-effect or not
                for task in work:
                    task.cancel()
        log.info("term %d over", elector.term)

    async def _consume(
        self,
        js: JetStreamContext,
        store: ViewStore,
        runner: EffectRunner,
        started: asyncio.Event,
        over: asyncio.Event,
    ) -> None:
        """Pull events until ``over``; events fetched but not handled go back at once."""
        durable = await ensure_events_consumer(js)
        psub = await js.pull_subscribe_bind(durable, subjects.EVENTS_STREAM)
        started.set()
        try:
            while not over.is_set():
                try:
                    msgs = await psub.fetch(_BATCH, timeout=_FETCH_TIMEOUT_S)
                except TimeoutError:  # nats-py raises both its own and asyncio.TimeoutError
                    continue
                try:
                    while msgs and not over.is_set():
                        await self._handle(msgs[0], store, runner)
                        del msgs[0]
                finally:  # cancelled (the lease ended) or stopping: hand the rest back
                    for msg in msgs:
                        with suppress(Exception):
                            await msg.nak()
        finally:
            with suppress(Exception):
                await psub.unsubscribe()

    async def _handle(self, msg: Msg, store: ViewStore, runner: EffectRunner) -> None:
        try:
            event = decode_event(msg.data)
        except BadMessageError as exc:
            self._metrics.bad_messages.labels("events").inc()
            log.warning("dropping bad event on %s: %s", msg.subject, exc)
            await msg.term()
            return
        kind = event_kind(event)
        self._metrics.events.labels(kind).inc()
        model = getattr(event, "model_id", None)
        with log_context(trace_id=event.trace_id, model=model, event=kind):
            try:
                await self._refresh_for(event, store)
                await self._decide(
                    lambda memory: on_event(
                        store.view(),
                        memory,
                        event,
                        self._clock(),
                        policy=self._policy,
                        ids=self._ids,
                    ),
                    runner,
                )
            except NotLeaderError:
                log.info("not the leader any more: %s goes back to the stream", kind)
                with suppress(Exception):
                    await msg.nak()
                return
            except Exception as exc:
                self._metrics.errors.inc()
                log.warning("handling %s failed, will retry: %s", kind, exc, exc_info=True)
                with suppress(Exception):
                    await msg.nak(delay=1.0)
                return
        await msg.ack()

    async def _refresh_for(self, event: Event, store: ViewStore) -> None:
        """Read again the keys an event is about, so the decision sees KV at least
        as new as the event (the watches may lag a moment behind the stream)."""
        if isinstance(event, ModelRegistered):
            await store.refresh(subjects.KV_MODELS, subjects.model_key(event.model.model_id))
        elif isinstance(event, ModelRemoved):
            await store.refresh(subjects.KV_MODELS, subjects.model_key(event.model_id))
        elif isinstance(event, NodeInventory):
            await store.refresh(subjects.KV_NODES, subjects.node_key(event.node.node))
        elif isinstance(event, Demand):
            if event.model_id not in store.models:
                await store.refresh(subjects.KV_MODELS, subjects.model_key(event.model_id))
        elif instance_id := getattr(event, "instance_id", ""):
            await store.refresh(subjects.KV_INSTANCES, subjects.instance_key(instance_id))

    async def _ticks(
        self, store: ViewStore, runner: EffectRunner, started: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Time-driven decisions every tick interval: plan timeouts and resends,
        replacing lost instances, reaching ``min_replicas``."""
        if not await _wait_or_stop(started, stop):
            return
        while not stop.is_set():
            try:
                await self._decide(
                    lambda memory: on_tick(
                        store.view(), memory, self._clock(), policy=self._policy, ids=self._ids
                    ),
                    runner,
                )
            except NotLeaderError:
                return
            except Exception as exc:
                self._metrics.errors.inc()
                log.warning("tick failed: %s", exc, exc_info=True)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.tick_interval_s)

    async def _decide(self, decide: Callable[[Memory], Outcome], runner: EffectRunner) -> None:
        """Decide and run the effects; decide again after a lost compare-and-set."""
        async with self._lock:
            for _ in range(_MAX_CONFLICT_RETRIES):
                outcome = decide(self._memory)
                level = logging.INFO if outcome.effects else logging.DEBUG
                for note in outcome.notes:
                    log.log(level, "%s", note)
                if await runner.run(outcome):
                    self._memory = outcome.memory
                    return
            log.warning("plan kept changing under us; giving up on this decision")


async def _wait_or_stop(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for ``event``; False if ``stop`` was set first."""
    while not event.is_set():
        if stop.is_set():
            return False
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 0.25)
    return True


async def _forward(started: asyncio.Event, ready: asyncio.Event, stop: asyncio.Event) -> None:
    if await _wait_or_stop(started, stop):
        ready.set()
