"""The job client: the gateway's one seam to the job bus.

``JobClient`` is the Protocol the request path codes against; tests replace
it with a double. ``NatsJobClient`` is the real one: jobs are JetStream
publishes to ``subjects.infer(model)``, replies arrive through one shared
``bus.ReplyRouter`` inbox (no subscription per request), cancels are core
NATS publishes to ``subjects.cancel(job_id)``, demand is an event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from migserve_shared import subjects
from migserve_shared.bus import EventPublisher, ReplyRouter
from migserve_shared.errors import MigserveError
from migserve_shared.messages import Demand, InferenceJob, JobReply, encode
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

log = logging.getLogger(__name__)


class JobQueueUnavailableError(MigserveError):
    """A job or event could not be published (NATS down, stream missing, timeout)."""


class JobClient(Protocol):
    """Publishes jobs, routes their replies, cancels them, announces demand."""

    @property
    def connected(self) -> bool:
        """Whether the bus is reachable right now (for /health)."""
        ...

    def open_replies(self) -> tuple[str, asyncio.Queue[JobReply]]:
        """A fresh reply subject and the queue its decoded replies land in."""
        ...

    def close_replies(self, reply_to: str) -> None:
        """Stop routing replies for ``reply_to``."""
        ...

    async def submit(self, job: InferenceJob) -> None:
        """Queue a job durably; JobQueueUnavailableError when that fails."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Tell whichever bridge holds ``job_id`` to drop it (best effort, never raises)."""
        ...

    async def publish_demand(self, demand: Demand) -> None:
        """Publish a demand event; JobQueueUnavailableError when that fails."""
        ...


class NatsJobClient:
    """``JobClient`` over NATS: JetStream for jobs and events, core NATS for replies."""

    def __init__(
        self,
        *,
        nc: NATS,
        js: JetStreamContext,
        router: ReplyRouter,
        events: EventPublisher,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self._router = router
        self._events = events
        self._timeout = publish_timeout_s
        self._subjects: dict[str, str] = {}  # model id -> jobs subject (registered models only)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    def open_replies(self) -> tuple[str, asyncio.Queue[JobReply]]:
        return self._router.open()

    def close_replies(self, reply_to: str) -> None:
        self._router.close(reply_to)

    def _subject(self, model: str) -> str:
        subject = self._subjects.get(model)
        if subject is None:
            subject = self._subjects[model] = subjects.infer(model)
        return subject

    async def submit(self, job: InferenceJob) -> None:
        try:
            await self._js.publish(self._subject(job.model), encode(job), timeout=self._timeout)
        except (NatsError, TimeoutError, OSError) as exc:
            raise JobQueueUnavailableError(
                f"publishing job {job.job_id} for {job.model} failed: {exc!r}"
            ) from exc

    async def cancel(self, job_id: str) -> None:
        try:
            await self._nc.publish(subjects.cancel(job_id), b"")
        except (NatsError, OSError) as exc:
            log.warning("publishing the cancel of job %s failed: %r", job_id, exc)

    async def publish_demand(self, demand: Demand) -> None:
        try:
            await self._events.publish(demand)
        except (NatsError, TimeoutError, OSError) as exc:
            raise JobQueueUnavailableError(
                f"publishing demand for {demand.model_id} failed: {exc!r}"
            ) from exc
