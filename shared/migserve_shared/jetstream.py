"""JetStream's streams and KV buckets: their settings, and setting them up.

``ensure_jetstream`` runs in every service at start (re-exported by ``bus``).
It looks before it writes, so a service whose NATS user may not create or
update a stream (``permissions``) starts fine once the stream is there.
"""

from __future__ import annotations

import dataclasses
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from migserve_shared import subjects

log = logging.getLogger(__name__)

DAY = 24 * 3600.0


STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=subjects.JOBS_STREAM,
        subjects=[subjects.JOBS_WILDCARD],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=600.0,
        duplicate_window=60.0,
    ),
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * DAY,
        max_bytes=1 << 30,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=subjects.COMMANDS_STREAM,
        subjects=[subjects.COMMANDS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=DAY,
        duplicate_window=600.0,
    ),
)

#: bucket -> (history, ttl seconds or None)
BUCKETS: dict[str, tuple[int, float | None]] = {
    subjects.KV_MODELS: (5, None),
    subjects.KV_NODES: (1, None),
    subjects.KV_INSTANCES: (5, None),
    subjects.KV_PLANS: (10, None),
    subjects.KV_LEADER: (1, 15.0),
}


async def ensure_jetstream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create what is missing and update what changed; safe to call from every service.

    A stream that exists with this version's settings is left alone, so a
    service whose NATS user may not create or update a stream (see
    ``permissions``) starts fine once another service has set it up; when it
    would have to and may not, it logs a warning and goes on.

    ``replicas`` is the number of copies on a NATS cluster (MIGSERVE_JS_REPLICAS);
    every service must pass the same value, or the last one to start wins.
    """
    for cfg in STREAMS:
        await _ensure_stream(js, _with_replicas(cfg, replicas))
    for bucket, (history, ttl) in BUCKETS.items():
        try:
            await js.key_value(bucket)
            continue
        except NotFoundError:  # nats-py raises BucketNotFoundError, a NotFoundError
            pass
        try:
            await js.create_key_value(bucket=bucket, history=history, ttl=ttl, replicas=replicas)
        except BadRequestError:
            pass  # created a moment ago by another service
        except (NatsError, TimeoutError) as exc:
            log.warning("KV bucket %s is missing and could not be created: %r", bucket, exc)


#: StreamConfig fields migserve sets; a stream whose values differ is updated
_MANAGED_FIELDS = (
    "subjects",
    "retention",
    "storage",
    "max_age",
    "max_bytes",
    "discard",
    "duplicate_window",
    "num_replicas",
)


def stream_changes(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    """The managed fields whose value in ``current`` is not the one ``wanted`` sets."""
    changed = []
    for name in _MANAGED_FIELDS:
        want = getattr(wanted, name)
        if want is not None and getattr(current, name) != want:
            changed.append(name)
    return changed


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    name = str(cfg.name)
    try:
        current = (await js.stream_info(name)).config
    except NotFoundError:
        try:
            await js.add_stream(config=cfg)
            return
        except BadRequestError:  # created a moment ago by another service
            current = (await js.stream_info(name)).config
        except (NatsError, TimeoutError) as exc:
            log.warning(
                "stream %s is missing and this client may not create it (%r); "
                "the scaler or an agent creates it",
                name,
                exc,
            )
            return
    changed = stream_changes(current, cfg)
    if not changed:
        return
    try:
        await js.update_stream(config=cfg)
        log.info("stream %s updated (%s)", name, ", ".join(changed))
    except (NatsError, TimeoutError) as exc:
        log.warning(
            "stream %s differs from this version's settings (%s) and this client may not "
            "update it (%r); the scaler updates it",
            name,
            ", ".join(changed),
            exc,
        )


def _with_replicas(cfg: StreamConfig, replicas: int) -> StreamConfig:
    return dataclasses.replace(cfg, num_replicas=replicas)
