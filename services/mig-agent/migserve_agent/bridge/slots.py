"""The bridge's slots: one long-lived pull on the model's shared consumer per free slot.

Each slot loops: while the engine gate is open and the bridge is not
stopping, it keeps one pull request (batch 1) pending on the shared durable
consumer, handles the job it brings to its end, and pulls again. A bridge so
never holds more jobs than its engine has slots, and JetStream hands a job
only to an instance with a free one (load-aware dispatch, DESIGN.md §4).

Pull requests are long-lived (``fetch_timeout_s``): an idle slot renews its
pull once per expiry, not in a poll loop. When the gate closes (the engine
failed) or the bridge stops, the idle slots' pulls are interrupted at once:
each such slot hands back whatever reached it (``nak``), unsubscribes its
inbox, which makes the server drop its pending pull request, and pulls again
on a fresh inbox once the gate opens. A job in flight to a dropped inbox at
that very moment is not lost: it was never acked, so JetStream redelivers it
after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from migserve_shared import subjects
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from migserve_agent.bridge.gate import EngineGate
from migserve_agent.bridge.metrics import BridgeMetrics

log = logging.getLogger(__name__)

#: how long a job handed back waits before it is offered again (this bridge's pulls are gone)
HAND_BACK_DELAY_S = 0.25
_RETRY_S = 1.0


class Slots:
    """Runs ``count`` slot loops; ``interrupt`` cuts the idle ones' pulls short."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        durable: str,
        handle: Callable[[Msg], Awaitable[None]],
        gate: EngineGate,
        stop: asyncio.Event,
        fetch_timeout_s: float,
        metrics: BridgeMetrics,
    ) -> None:
        self._js = js
        self._metrics = metrics
        self._durable = durable
        self._handle = handle
        self._gate = gate
        self._stop = stop
        self._fetch_timeout_s = fetch_timeout_s
        #: slot -> its pending pull, while it waits for a job
        self._pulls: dict[int, asyncio.Future[list[Msg]]] = {}

    def interrupt(self) -> None:
        """End every pending pull now (the gate closed or the bridge stops)."""
        for pull in self._pulls.values():
            pull.cancel()

    async def run(self, slot: int) -> None:
        """One slot's loop, until the bridge stops."""
        gate, stop = self._gate, self._stop
        while not stop.is_set():
            if not gate.is_open:
                await gate.wait_open(0.5)
                continue
            try:
                psub = await self._js.pull_subscribe_bind(self._durable, subjects.JOBS_STREAM)
            except Exception as exc:  # connection trouble: the client reconnects
                log.warning("slot %d: cannot subscribe: %r", slot, exc)
                await asyncio.sleep(_RETRY_S)
                continue
            try:
                await self._pull(slot, psub)
            finally:
                await self._release(slot, psub)

    async def _pull(self, slot: int, psub: JetStreamContext.PullSubscription) -> None:
        """Pull and handle jobs on one inbox until the gate closes or the bridge stops."""
        gate, stop = self._gate, self._stop
        while gate.is_open and not stop.is_set():
            pull = asyncio.ensure_future(psub.fetch(1, timeout=self._fetch_timeout_s))
            self._pulls[slot] = pull
            try:
                msgs = await pull
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the slot itself is cancelled
                return  # interrupted: release this inbox
            except TimeoutError:
                continue
            except Exception as exc:  # connection trouble: the client reconnects
                log.warning("slot %d: fetch failed: %r", slot, exc)
                await asyncio.sleep(min(self._fetch_timeout_s, _RETRY_S))
                continue
            finally:
                self._pulls.pop(slot, None)
            for msg in msgs:
                if stop.is_set() or not gate.is_open:
                    await self._hand_back(msg)
                    continue
                try:
                    await self._handle(msg)
                except Exception:
                    log.exception("slot %d: handling a job failed", slot)

    async def _hand_back(self, msg: Msg) -> None:
        """Give a job back untouched, for another instance."""
        self._metrics.job("retried")
        with contextlib.suppress(Exception):
            await msg.nak(delay=HAND_BACK_DELAY_S)

    async def _release(self, slot: int, psub: JetStreamContext.PullSubscription) -> None:
        """Hand back the jobs that reached the inbox after its last pull ended, then
        unsubscribe it (the server drops a pull request whose inbox has no subscriber)."""
        with contextlib.suppress(Exception):
            while psub.pending_msgs > 0:
                for msg in await psub.fetch(1, timeout=0.05):
                    await self._hand_back(msg)
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        log.debug("slot %d released its pull", slot)
