"""KV watchers that keep the live view current: the models and instances buckets.

Each loop replays the bucket's current values, then follows every change
(``kv.watchall()`` on an ordered consumer, which survives reconnects). A
value that does not decode is counted and logged and changes nothing; a
watcher that fails is restarted after a short pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from migserve_gateway.core.view import LiveView
from migserve_gateway.metrics import GatewayMetrics
from migserve_shared.errors import BadMessageError
from migserve_shared.ids import InvalidTokenError, decode_token
from migserve_shared.messages import decode_instance, decode_model_spec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
#: how often a quiet watch checks whether NATS reconnected meanwhile
RECONNECT_CHECK_S = 1.0

Apply = Callable[[str, bytes | None], None]


class ViewFeeder:
    """Applies KV entries of the models and instances buckets to a LiveView."""

    def __init__(self, view: LiveView, metrics: GatewayMetrics) -> None:
        self._view = view
        self._metrics = metrics

    def _bad(self, source: str, key: str, exc: Exception) -> None:
        self._metrics.bad_messages.labels(source=source).inc()
        log.warning("ignoring undecodable %s entry %r: %s", source, key, exc)

    def model(self, key: str, value: bytes | None) -> None:
        """A models-bucket entry (None: deleted)."""
        if value is None:
            try:
                self._view.drop_model(decode_token(key))
            except InvalidTokenError as exc:
                self._bad("models", key, exc)
            return
        try:
            self._view.put_model(decode_model_spec(value))
        except BadMessageError as exc:
            self._bad("models", key, exc)

    def instance(self, key: str, value: bytes | None) -> None:
        """An instances-bucket entry (None: deleted)."""
        if value is None:
            self._view.drop_instance(key)
            return
        try:
            self._view.put_instance(key, decode_instance(value))
        except BadMessageError as exc:
            self._view.drop_instance(key)
            self._bad("instances", key, exc)


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    stop: Callable[[], Awaitable[None]] = watcher.stop
    await stop()


async def _next(watcher: KeyValue.KeyWatcher, wait_s: float) -> KeyValue.Entry | None:
    """The next entry (None: end of the replay); nats TimeoutError when quiet."""
    updates: Callable[..., Awaitable[KeyValue.Entry | None]] = watcher.updates
    return await updates(timeout=wait_s)


async def load(kv: KeyValue, apply: Apply) -> None:
    """Apply every live value of a bucket once (before serving)."""
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is None:  # end of the current values
                return
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            apply(entry.key, None if deleted else (entry.value or b""))
            if not entry.delta:
                return
    finally:
        await _stop(watcher)


async def follow(kv: KeyValue, apply: Apply, *, name: str, reconnects: Callable[[], int]) -> None:
    """Follow every change of a bucket until cancelled.

    The watch is an ephemeral ordered consumer, which a restarted nats-server
    no longer has: after every reconnect (``reconnects()`` changes) the watch
    starts again and replays the current values, so the view catches up.
    """
    while True:
        seen = reconnects()
        try:
            watcher = await kv.watchall()
        except (NatsError, TimeoutError) as exc:
            log.warning("%s: starting the watch failed: %r; retrying", name, exc)
            if reconnects() == seen:  # else NATS came back meanwhile: retry at once
                await asyncio.sleep(RESTART_DELAY_S)
            continue
        try:
            while reconnects() == seen:
                try:
                    entry = await _next(watcher, RECONNECT_CHECK_S)
                except NatsTimeoutError:
                    continue
                if entry is None:
                    continue
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                apply(entry.key, None if deleted else (entry.value or b""))
            log.info("%s: NATS reconnected; restarting the watch", name)
        except NatsError as exc:
            log.warning("%s: watch failed: %r; restarting", name, exc)
            await asyncio.sleep(RESTART_DELAY_S)
        finally:
            try:
                await _stop(watcher)
            except (NatsError, TimeoutError) as exc:
                log.debug("%s: stopping the watch failed: %r", name, exc)
