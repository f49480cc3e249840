"""The sim engine's scheduler: slots, a FIFO queue, and token timing from the perf model.

A request waits for a slot (first come, first served), produces its first token
``TTFT`` after taking it, then one token every ``TPOT(N)``, where N is the
number of requests holding a slot at that moment. Deadlines are absolute, so a
busy event loop delays tokens but does not stretch the mean TPOT. Cancelling
the task that runs a request (a client that went away) frees its slot or its
place in the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from migserve_agent.sim_engine.metrics import SimMetrics
from migserve_agent.sim_engine.perf import PerfModel

log = logging.getLogger(__name__)

OnToken = Callable[[int], Awaitable[None]]


class SlotPool:
    """A counting semaphore that hands slots to waiters strictly in arrival order."""

    def __init__(self, slots: int, *, on_change: Callable[[], None] = lambda: None) -> None:
        self._slots = slots
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_change = on_change

    @property
    def in_use(self) -> int:
        return self._slots - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._on_change()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._on_change()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it ran: pass it on
            else:
                self._waiters.remove(waiter)
                self._on_change()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; _free is unchanged
                self._on_change()
                return
        self._free += 1
        self._on_change()


@dataclass(frozen=True, slots=True)
class RunTimes:
    """When a finished request waited and ran (seconds)."""

    queue_s: float
    inference_s: float
    duration_s: float


class QueueFullError(Exception):
    """The engine's queue holds ``max_queue`` requests already."""


class SimEngine:
    """Runs simulated generations against the performance model."""

    def __init__(
        self,
        *,
        perf: PerfModel,
        slots: int,
        metrics: SimMetrics,
        max_queue: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._perf = perf
        self._metrics = metrics
        self._pool = SlotPool(slots, on_change=self._update_gauges)
        self._max_queue = max_queue
        self._clock = clock
        self.slots = slots

    @property
    def perf(self) -> PerfModel:
        return self._perf

    def set_speed_factor(self, factor: float) -> None:
        self._perf = self._perf.with_speed_factor(factor)
        log.info("speed factor set to %s", factor)

    @property
    def active(self) -> int:
        """Requests holding a slot (prefilling or decoding)."""
        return self._pool.in_use

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return self._pool.waiting

    def check_admission(self) -> None:
        """Raise QueueFullError when a new request would have to queue beyond ``max_queue``."""
        if self._max_queue is None or self._pool.in_use < self.slots:
            return
        if self._pool.waiting >= self._max_queue:
            raise QueueFullError(f"queue is full ({self._pool.waiting} waiting)")

    async def run(
        self, *, prompt_tokens: int, generated_tokens: int, on_token: OnToken | None = None
    ) -> RunTimes:
        """Take a slot, then call ``on_token(i)`` when token i is due; free the slot at the end."""
        clock = self._clock
        arrived = clock()
        self._metrics.input_length.observe(prompt_tokens)
        try:
            await self._pool.acquire()
        except asyncio.CancelledError:
            self._metrics.request_failed("cancelled")
            raise
        started = clock()
        try:
            deadline = started + self._perf.ttft_ms(prompt_tokens) / 1000.0
            for index in range(generated_tokens):
                if index:
                    deadline += self._perf.tpot_ms(self._pool.in_use) / 1000.0
                await asyncio.sleep(max(0.0, deadline - clock()))
                if on_token is not None:
                    await on_token(index)
        except asyncio.CancelledError:
            self._metrics.request_failed("cancelled")
            raise
        except Exception:
            self._metrics.request_failed("generation")
            raise
        finally:
            self._pool.release()
        finished = clock()
        times = RunTimes(started - arrived, finished - started, finished - arrived)
        self._metrics.request_succeeded(
            duration_s=times.duration_s,
            queue_s=times.queue_s,
            inference_s=times.inference_s,
            generated_tokens=generated_tokens,
        )
        return times

    def _update_gauges(self) -> None:
        self._metrics.queue_size.set(self._pool.waiting)
        self._metrics.batch_size.set(self._pool.in_use)
