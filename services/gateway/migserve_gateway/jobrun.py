"""One submitted job as the HTTP side sees it: its first reply, then the rest.

``JobRun`` reads the job's reply queue (fed by the job client's shared reply
router), holds until the first token with demand and one retry (see
``dispatch``), then hands out replies until the end marker, and closes:
the reply route, the admission slots and, unless the job ended, a cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import (
    Demand,
    InferenceJob,
    JobAccepted,
    JobEnd,
    JobError,
    JobReply,
    TokenChunk,
    now,
)

from migserve_gateway.adapters.jobs import JobQueueUnavailableError
from migserve_gateway.core import errors
from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.errors import ApiError

if TYPE_CHECKING:
    from migserve_gateway.dispatch import Dispatcher

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 1  # re-publishes allowed after a retryable error before the first token

_CLIENT_GONE = JobError(code=ErrorCode.CANCELLED, message="client disconnected")


class ClientGoneError(Exception):
    """The HTTP client went away; the job was cancelled."""


class JobRun:
    """A submitted job: its first reply, then the rest of its stream."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        job: InferenceJob,
        queue: asyncio.Queue[JobReply],
        *,
        hold_s: float,
        started: float,
        caller: str = ANONYMOUS,
        held: bool = False,
    ) -> None:
        self._d = dispatcher
        self.caller = caller
        self.job = job
        self._queue = queue
        self._hold_s = hold_s
        self._started = started
        self._last_token = 0.0
        #: the index the next token chunk must start at (gap detection)
        self._next_index = 0
        self.finished = False  # the end marker or a final error arrived
        self.disconnected = False
        self.streaming = False  # the first token arrived
        #: the instance that accepted the job last
        self.instance_id: str | None = None
        self._held = held  # counted in the cold-start queue until the first reply
        self._closed = False

    @property
    def model(self) -> str:
        return self.job.model

    def client_gone(self) -> None:
        """Called when the HTTP client disconnects: wake the reader, which cancels."""
        if not self.finished and not self.disconnected:
            self.disconnected = True
            self._queue.put_nowait(_CLIENT_GONE)

    def instance_lost(self, instance_id: str) -> None:
        """The instance serving this run is gone: end a started stream with an error."""
        if self.instance_id == instance_id:
            self.instance_id = None
        if self.streaming and not self.finished and not self._closed:
            self._d.metrics.instance_lost.inc()
            log.warning("job %s: instance %s failed mid-stream", self.job.job_id, instance_id)
            self._queue.put_nowait(
                JobError(
                    code=ErrorCode.ENGINE_FAILED,
                    message=f"instance {instance_id} failed during the answer",
                    instance_id=instance_id,
                )
            )

    def _accepted_by(self, instance_id: str) -> None:
        if instance_id and instance_id != self.instance_id:
            self._d.track(self, self.instance_id, instance_id)
            self.instance_id = instance_id

    def _stop_holding(self) -> None:
        if self._held:
            self._held = False
            self._d.release_hold(self.job.model)

    async def first(self) -> TokenChunk | JobEnd:
        """Hold until the first token (or an empty completion's end marker).

        Raises ApiError for a timeout or an error reply, ClientGoneError when
        the client left. Publishes demand while the model has no ready instance.
        """
        d = self._d
        model = self.job.model
        interval = d.timeouts.demand_interval_s
        hold_until = time.monotonic() + self._hold_s
        waiting = accepted = False
        try:
            while True:
                remaining = hold_until - time.monotonic()
                if remaining <= 0:
                    raise self._hold_timeout(accepted=accepted)
                wait = remaining
                if not accepted:
                    # look at the view again every interval: the instance the job was
                    # queued for may go away while it waits (then demand is due)
                    wait = min(remaining, interval)
                if not accepted and not d.view.ready_count(model):
                    if not waiting:
                        waiting = True
                        d.demand.enter(model)
                    if d.demand.due(model, time.monotonic()):
                        await self._publish_demand()
                try:
                    async with asyncio.timeout(wait):
                        reply = await self._queue.get()
                except TimeoutError:
                    continue
                if self.disconnected:
                    raise ClientGoneError
                if (
                    isinstance(reply, TokenChunk | JobEnd)
                    and (lost := self._lost(reply)) is not None
                ):
                    self.finished = True
                    raise errors.from_job_error(lost.code, lost.message, model)
                if isinstance(reply, TokenChunk):
                    self._last_token = time.perf_counter()
                    d.metrics.ttft.observe(self._last_token - self._started)
                    self.streaming = True
                    return reply
                if isinstance(reply, JobEnd):
                    self.finished = True
                    return reply
                if isinstance(reply, JobAccepted):
                    accepted = True
                    self._stop_holding()
                    self._accepted_by(reply.instance_id)
                    hold_until = max(hold_until, time.monotonic() + d.timeouts.token_idle_s)
                    continue
                if await self._retry(reply):
                    accepted = False
                    continue
                self.finished = True
                raise errors.from_job_error(reply.code, reply.message, model)
        finally:
            self._stop_holding()
            if waiting:
                d.demand.leave(model)

    def _hold_timeout(self, *, accepted: bool) -> ApiError:
        model = self.job.model
        if accepted:
            return errors.stream_stalled(model, self._d.timeouts.token_idle_s)
        if not self._d.view.ready_count(model):
            return errors.no_instance_ready(model, self._hold_s)
        return errors.queue_timeout(model, self._hold_s)

    async def _publish_demand(self) -> None:
        d = self._d
        model = self.job.model
        demand = Demand(
            model_id=model,
            waiting=d.demand.waiting(model),
            request_id=self.job.request_id,
            trace_id=self.job.trace_id,
        )
        try:
            await d.jobs.publish_demand(demand)
        except JobQueueUnavailableError as exc:
            log.warning("%s", exc)
            return
        d.metrics.demand_events.inc()
        log.info("no ready instance of %s; demand published (waiting %d)", model, demand.waiting)

    async def _retry(self, err: JobError) -> bool:
        """Re-publish once after a retryable error before the first token."""
        if not err.retryable or self.job.attempts >= MAX_ATTEMPTS:
            return False
        d = self._d
        hold_s = d.hold_s(self.job.model)
        self.job = msgspec.structs.replace(
            self.job, attempts=self.job.attempts + 1, deadline=now() + hold_s
        )
        log.info(
            "job %s failed before its first token on %s (%s: %s); retrying",
            self.job.job_id,
            err.instance_id or "an instance",
            err.code.value,
            err.message,
        )
        try:
            await d.jobs.submit(self.job)
        except JobQueueUnavailableError as exc:
            log.warning("%s", exc)
            return False
        d.metrics.job_retries.inc()
        return True

    async def next_reply(self) -> TokenChunk | JobEnd | JobError:
        """The next token, the end marker, or a final error (after the first token).

        Raises ApiError when the stream stalls, ClientGoneError when the client left.
        """
        queue = self._queue
        while True:
            try:
                reply = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(self._d.timeouts.token_idle_s):
                        reply = await queue.get()
                except TimeoutError:
                    raise errors.stream_stalled(
                        self.job.model, self._d.timeouts.token_idle_s
                    ) from None
            if (taken := self._take(reply)) is not None:
                return taken

    def next_ready(self) -> TokenChunk | JobEnd | JobError | None:
        """Like ``next_reply`` for a reply that already arrived; None when none did.

        A stream writes every reply that is ready in one go: a client that
        fell behind gets fewer, larger writes instead of more delay.
        """
        queue = self._queue
        while not queue.empty():
            if (taken := self._take(queue.get_nowait())) is not None:
                return taken
        return None

    def _take(self, reply: JobReply) -> TokenChunk | JobEnd | JobError | None:
        if self.disconnected:
            raise ClientGoneError
        if isinstance(reply, TokenChunk | JobEnd) and (lost := self._lost(reply)) is not None:
            self.finished = True
            return lost
        if isinstance(reply, TokenChunk):
            t = time.perf_counter()
            self._d.metrics.inter_token.observe(t - self._last_token)
            self._last_token = t
            return reply
        if isinstance(reply, JobEnd | JobError):
            self.finished = True
            return reply
        return None  # a JobAccepted here (e.g. a duplicate delivery) carries nothing for the client

    def _lost(self, reply: TokenChunk | JobEnd) -> JobError | None:
        """A JobError when replies were lost before ``reply`` (a gap in the token
        indices, or an end marker that counts more tokens than arrived); replies
        are core NATS messages, so an outage can drop some while later ones arrive.
        Chunks and ends that do not say how many tokens they carry are not checked."""
        if isinstance(reply, TokenChunk):
            if not reply.count:
                return None
            expected, self._next_index = self._next_index, reply.index + reply.count
            if reply.index == expected:
                return None
            missing = f"tokens {expected} to {reply.index - 1}"
        else:
            if reply.tokens_sent is None or reply.tokens_sent == self._next_index:
                return None
            missing = f"tokens {self._next_index} to {reply.tokens_sent - 1}"
        self._d.metrics.replies_lost.inc()
        log.warning("job %s: replies lost (%s); the answer ends with an error",
                    self.job.job_id, missing)  # fmt: skip
        return JobError(
            code=ErrorCode.INTERNAL,
            message=f"part of the answer was lost in transit ({missing}); retry the request",
            instance_id=self.instance_id or "",
        )

    async def close(self) -> None:
        """Stop routing replies; cancel the job unless it ended. Idempotent."""
        if self._closed:
            return
        self._closed = True
        d = self._d
        d.jobs.close_replies(self.job.reply_to)
        d.admission.release(self.caller)
        self._stop_holding()
        if self.instance_id is not None:
            d.track(self, self.instance_id, None)
        d.metrics.in_flight.dec()
        if not self.finished:
            d.metrics.cancels.inc()
            await d.jobs.cancel(self.job.job_id)
            log.info("job %s cancelled", self.job.job_id)
