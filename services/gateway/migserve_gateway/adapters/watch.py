"""KV watchers that keep the live view current: the models and instances buckets.

``load`` replays a bucket's current values before the gateway serves;
``migserve_shared.bus.follow_bucket`` then follows every change (and starts
again after a NATS reconnect). A value that does not decode is counted and
logged and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from migserve_gateway.core.view import LiveView
from migserve_gateway.metrics import GatewayMetrics
from migserve_shared.errors import BadMessageError
from migserve_shared.ids import InvalidTokenError, decode_token
from migserve_shared.messages import decode_instance, decode_model_spec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)


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
