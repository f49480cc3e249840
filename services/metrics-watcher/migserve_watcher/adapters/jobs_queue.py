"""Jobs waiting in JetStream for a free engine slot, per model.

Each model's bridges share one durable pull consumer on the jobs stream and
pull only when a slot is free, so the consumer's ``num_pending`` (messages not
yet delivered to any bridge) is the model's queue: the ``waiting`` of its
evidence. A model whose consumer does not exist yet (no bridge ever bound)
has nothing delivered and reports what the stream holds for it as unknown
(None), as does any JetStream error: the caller keeps the engines' own value.
"""

from __future__ import annotations

import logging

from migserve_shared import subjects
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

log = logging.getLogger(__name__)


async def jobs_waiting(js: JetStreamContext, model_id: str) -> int | None:
    """Jobs of ``model_id`` not yet delivered to a bridge; None when unknown."""
    try:
        info = await js.consumer_info(subjects.JOBS_STREAM, subjects.jobs_consumer(model_id))
    except (NatsError, TimeoutError) as exc:
        log.debug("jobs consumer of %s unreadable: %s", model_id, exc)
        return None
    pending = info.num_pending
    return max(0, int(pending)) if pending is not None else None
