"""The engine gate: the bridge pulls jobs only while its engine is ready.

It starts closed and opens when the engine's health check answers 200 (an
engine still loading answers 503). When a job fails because the engine is
down, loading or broke off, the job handler reports it: the gate closes and
the probe loop checks again, with backoff, before any slot pulls another job.
Without this, a dead engine's bridge would keep pulling jobs (it has free
slots) and burn their delivery attempts while healthy instances wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class EngineGate:
    """Open while the engine is ready; the slots wait on it before each pull."""

    def __init__(
        self,
        *,
        probe: Callable[[], Awaitable[bool]],
        interval_s: float,
        max_interval_s: float,
        on_change: Callable[[bool], None] = lambda is_open: None,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._max_interval_s = max(max_interval_s, interval_s)
        self._on_change = on_change
        self._open = asyncio.Event()
        self._wake = asyncio.Event()
        self._closed_reason = "not probed yet"

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the gate to open; return whether it is open."""
        if self._open.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._open.wait(), timeout_s)
        return self._open.is_set()

    def report_failure(self, reason: str) -> None:
        """The engine failed a job in a way a health check may explain: re-check it."""
        if self._open.is_set():
            log.warning("engine failed (%s); pausing pulls until it is healthy", reason)
            self._closed_reason = reason
            self._open.clear()
            self._on_change(False)
        self._wake.set()

    async def run(self) -> None:
        """Probe whenever the gate is closed; runs until cancelled."""
        while True:
            if not self._open.is_set():
                await self._probe_until_ready()
            await self._wake.wait()
            self._wake.clear()

    async def _probe_until_ready(self) -> None:
        interval = self._interval_s
        attempts = 0
        while not await self._probe():
            attempts += 1
            if attempts == 1:
                log.info("engine not ready (%s); probing its health", self._closed_reason)
            await asyncio.sleep(interval)
            interval = min(interval * 2, self._max_interval_s)
        log.info("engine ready; taking jobs")
        self._open.set()
        self._on_change(True)
