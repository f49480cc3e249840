"""Watch a KV bucket and hand every entry to a callback until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

#: (key, value or None, revision, operation) -> None
EntrySink = Callable[[str, bytes | None, int, str | None], None]


async def watch_bucket(
    kv: KeyValue,
    sink: EntrySink,
    *,
    loaded: asyncio.Event,
    stop: asyncio.Event,
    poll_s: float = 0.25,
) -> None:
    """Feed ``sink`` the bucket's current entries, set ``loaded``, then follow updates."""
    watcher = await kv.watchall()
    try:
        while not stop.is_set():
            try:
                entry = await watcher.updates(timeout=poll_s)  # type: ignore[no-untyped-call]
            except TimeoutError:  # nats-py raises both its own and asyncio.TimeoutError
                continue
            if entry is None:  # caught up with the bucket's current contents
                loaded.set()
                continue
            sink(entry.key, entry.value, entry.revision or 0, entry.operation)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
