"""The scaler's durable pull consumer on the events stream.

One durable consumer ("scaler") filtered to the event kinds the scaler acts
on, so a scaler that restarts resumes where it stopped. A consumer created
for the first time starts a few minutes back in the stream, so demand
published just before the scaler came up is not lost; older events are
harmless anyway (the core ignores stale demand and results of finished plans).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from migserve_shared import subjects
from migserve_shared.messages import EVENT_KINDS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

DURABLE = "scaler"


def consumed_kinds() -> list[str]:
    """demand, model.*, instance.*, command.*, slo.*, node.inventory (not the
    per-window metrics.snapshot: slo.underload carries the evidence idleness needs)."""
    families = ("model", "instance", "command", "slo")
    return [
        k
        for k in EVENT_KINDS
        if k in ("demand", "node.inventory") or k.split(".", 1)[0] in families
    ]


def filter_subjects() -> list[str]:
    return sorted(subjects.events_of_kind(k) for k in consumed_kinds())


async def ensure_events_consumer(
    js: JetStreamContext, *, durable: str = DURABLE, look_back_s: float = 300.0
) -> str:
    """Create the durable consumer, or update its filters if they changed."""
    filters = filter_subjects()
    try:
        info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
    except NotFoundError:
        config = ConsumerConfig(
            durable_name=durable,
            filter_subjects=filters,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - timedelta(seconds=look_back_s),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=20,
            max_ack_pending=1000,
        )
        try:
            await js.add_consumer(subjects.EVENTS_STREAM, config=config)
        except BadRequestError:  # another scaler created it a moment ago
            return await ensure_events_consumer(js, durable=durable, look_back_s=look_back_s)
        log.info("created events consumer %s (%d kinds)", durable, len(filters))
        return durable
    if sorted(info.config.filter_subjects or []) != filters:
        config = info.config.evolve(filter_subjects=filters, filter_subject=None)
        await js.add_consumer(subjects.EVENTS_STREAM, config=config)
        log.info("updated the filters of events consumer %s", durable)
    return durable
