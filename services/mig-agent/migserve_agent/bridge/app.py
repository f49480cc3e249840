"""The bridge wired together: NATS, the engine, the slots, cancels, metrics, drain.

One slot loop per engine slot (``slots``), each keeping one long-lived pull on
the model's shared durable consumer while the engine gate is open: a bridge
holds exactly as many outstanding pulls as it has free slots, so JetStream
hands jobs only to instances with room (load-aware dispatch). When the gate
closes (the engine failed its health check) the idle pulls are cut short.

Stopping (the ``stop`` event): the idle slots' pulls end at once (a job that
reached one regardless is handed back), the jobs in hand finish for up to
``drain_timeout_s``, then the rest are cut off (handed back if no token was
sent, else ended with a retryable DRAINING error), and NATS drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from migserve_shared import subjects
from migserve_shared.bus import connect, drain_quietly, ensure_jetstream, ensure_jobs_consumer
from migserve_shared.logs import log_context
from nats.aio.msg import Msg

from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.engine import EngineClient, new_http_pool
from migserve_agent.bridge.gate import EngineGate
from migserve_agent.bridge.http import MetricsServer, create_app
from migserve_agent.bridge.jobs import JobHandler
from migserve_agent.bridge.metrics import BridgeMetrics
from migserve_agent.bridge.running import RecentCancels, RunningJobs
from migserve_agent.bridge.settings import BridgeSettings
from migserve_agent.bridge.slots import Slots

log = logging.getLogger(__name__)

T = TypeVar("T")

_CANCEL_MEMORY_LIMIT = 65536
_ABORT_GRACE_S = 5.0


class Bridge:
    """One bridge: ``run(stop)`` serves until ``stop`` is set, then drains and returns."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics(
            model=settings.model,
            instance=settings.instance_id,
            node=settings.node,
            engine=settings.engine_kind,
            slots=settings.slots,
            profile=settings.profile,
        )
        self.running = RunningJobs()
        self._cancels = RecentCancels(ttl_s=settings.cancel_memory_s, limit=_CANCEL_MEMORY_LIMIT)
        self._gate: EngineGate | None = None
        self._slots: Slots | None = None
        self._draining = False
        #: the port /metrics is served on, once it is
        self.metrics_port: int | None = None

    async def run(
        self, stop: asyncio.Event, *, on_ready: Callable[[int], None] = lambda port: None
    ) -> None:
        """Serve until ``stop`` is set; ``on_ready(metrics_port)`` once jobs may flow."""
        s = self.settings
        with log_context(model=s.model, instance=s.instance_id):
            async with contextlib.AsyncExitStack() as stack:
                http = await stack.enter_async_context(
                    new_http_pool(
                        s.engine_base_url,
                        slots=s.slots,
                        connect_timeout_s=s.engine_connect_timeout_s,
                        idle_timeout_s=s.engine_idle_timeout_s,
                    )
                )
                engine = EngineClient(
                    client=http, base_url=s.engine_base_url, dialect=dialect_for(s.engine_kind)
                )
                gate = self._gate = EngineGate(
                    probe=engine.healthy,
                    interval_s=s.health_interval_s,
                    max_interval_s=s.health_max_interval_s,
                    on_change=self._gate_changed,
                )
                server = MetricsServer(
                    create_app(metrics=self.metrics, health=self.health),
                    host=s.metrics_host,
                    port=s.metrics_port,
                )
                stack.callback(server.close)
                self.metrics_port = server.port
                nc = await _unless_stopped(connect(s.nats), stop)
                if nc is None:
                    log.info("stopped while waiting for NATS at %s", s.nats.url)
                    return
                stack.push_async_callback(drain_quietly, nc)
                js = nc.jetstream()
                await ensure_jetstream(js, replicas=s.nats.js_replicas)
                durable = await ensure_jobs_consumer(js, s.model, ack_wait=s.ack_wait_s)
                await nc.subscribe(subjects.CANCEL_WILDCARD, cb=self._on_cancel)
                await nc.flush()
                handler = JobHandler(
                    nc=nc,
                    engine=engine,
                    settings=s,
                    metrics=self.metrics,
                    running=self.running,
                    cancels=self._cancels,
                    gate=gate,
                )
                slots = self._slots = Slots(
                    js=js,
                    durable=durable,
                    handle=handler.handle,
                    gate=gate,
                    stop=stop,
                    fetch_timeout_s=s.fetch_timeout_s,
                    metrics=self.metrics,
                )
                async with asyncio.TaskGroup() as tg:
                    serving = tg.create_task(server.serve(), name="bridge-metrics-http")
                    await server.wait_started(serving)
                    probing = tg.create_task(gate.run(), name="bridge-engine-gate")
                    loops = [
                        tg.create_task(slots.run(i), name=f"bridge-slot-{i}")
                        for i in range(s.slots)
                    ]
                    log.info(
                        "bridge for %s (%s engine at %s, %d slots) ready; metrics on %s:%d",
                        s.model,
                        s.engine_kind,
                        s.engine_base_url,
                        s.slots,
                        s.metrics_host,
                        server.port,
                    )
                    on_ready(server.port)
                    await stop.wait()
                    await self._drain(loops)
                    probing.cancel()
                    server.stop()
            log.info("bridge stopped")

    def abort_now(self) -> None:
        """Cut off every job in hand at once (a second SIGTERM)."""
        n = self.running.abort_all("draining")
        log.warning("stopping now: %d jobs cut off", n)

    def health(self) -> dict[str, Any]:
        s = self.settings
        return {
            "status": "draining" if self._draining else "ok",
            "engine_ready": self._gate is not None and self._gate.is_open,
            "model": s.model,
            "instance_id": s.instance_id,
            "node": s.node,
            "engine": s.engine_kind,
            "slots": s.slots,
            "in_flight": len(self.running),
            "metrics_port": self.metrics_port,
        }

    async def _on_cancel(self, msg: Msg) -> None:
        job = self.running.get(msg.subject)
        if job is None:
            self._cancels.remember(msg.subject, time.time())
            return
        log.info("cancel received for job %s", job.job_id)
        job.abort("cancelled")

    def _gate_changed(self, is_open: bool) -> None:
        self.metrics.engine_ready.set(int(is_open))
        if not is_open and self._slots is not None:
            self._slots.interrupt()  # no job should wait in a pull of a failed engine

    async def _drain(self, slots: list[asyncio.Task[None]]) -> None:
        s = self.settings
        self._draining = True
        log.info(
            "draining: no new jobs; up to %.1f s for the %d in hand",
            s.drain_timeout_s,
            len(self.running),
        )
        if self._slots is not None:
            self._slots.interrupt()  # idle slots: stop pulling now, not when their pulls expire
        _, pending = await asyncio.wait(slots, timeout=s.drain_timeout_s + s.fetch_timeout_s)
        if not pending:
            return
        n = self.running.abort_all("draining")
        log.warning("drain timeout after %.1f s: %d jobs cut off", s.drain_timeout_s, n)
        _, pending = await asyncio.wait(pending, timeout=_ABORT_GRACE_S)
        for task in pending:
            task.cancel()


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Await ``work``, or cancel it and return None if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopped):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    return None if task.cancelled() else task.result()
