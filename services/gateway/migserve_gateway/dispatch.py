"""One job's life on the bus: submit, hold for the first reply, stream, cancel.

The request path, kept small because it is benchmarked: no subscription per
request (replies come through the job client's shared router), one
JetStream publish, one queue read per reply.

Holding: while the model has no ready instance, the request waits up to the
cold-start timeout and a ``Demand`` event is published for the model at most
once per demand interval while any request for it waits. A retryable error
before the first token re-publishes the job once (``attempts + 1``). A job
that ends without its end marker (timeout, stall, client gone) is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
from migserve_shared.errors import ErrorCode
from migserve_shared.ids import new_id
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

from migserve_gateway.adapters.jobs import JobClient, JobQueueUnavailableError
from migserve_gateway.core import errors
from migserve_gateway.core.admission import Admission, AdmissionLimits
from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.chat import ChatCall, build_job
from migserve_gateway.core.demand import DemandBook
from migserve_gateway.core.errors import ApiError
from migserve_gateway.core.tracing import RequestContext
from migserve_gateway.core.view import LiveView
from migserve_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 1  # re-publishes allowed after a retryable error before the first token

_CLIENT_GONE = JobError(code=ErrorCode.CANCELLED, message="client disconnected")


class ClientGoneError(Exception):
    """The HTTP client went away; the job was cancelled."""


@dataclass(frozen=True, slots=True)
class DispatchTimeouts:
    cold_start_s: float
    queue_s: float
    token_idle_s: float
    demand_interval_s: float


class Dispatcher:
    """Submits jobs for validated chat calls; one per app."""

    def __init__(
        self,
        *,
        jobs: JobClient,
        view: LiveView,
        timeouts: DispatchTimeouts,
        metrics: GatewayMetrics,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self.jobs = jobs
        self.admission = Admission(admission or AdmissionLimits())
        self.view = view
        self.timeouts = timeouts
        self.metrics = metrics
        self.demand = DemandBook(timeouts.demand_interval_s)

    def hold_s(self, model: str) -> float:
        """How long a new job may wait for its first reply."""
        if self.view.ready_count(model):
            return self.timeouts.queue_s
        return self.timeouts.cold_start_s

    async def submit(
        self, call: ChatCall, ctx: RequestContext, *, started: float, caller: str = ANONYMOUS
    ) -> JobRun:
        """Publish the job for ``call``; ApiError(503) when the queue is unreachable.

        ApiError 503 / 429 (with Retry-After) when the gateway or ``caller`` is
        at its in-flight bound; the slot is released when the run closes.
        """
        self.admission.admit(caller)
        try:
            return await self._submit(call, ctx, started=started, caller=caller)
        except BaseException:
            self.admission.release(caller)
            raise

    async def _submit(
        self, call: ChatCall, ctx: RequestContext, *, started: float, caller: str
    ) -> JobRun:
        reply_to, queue = self.jobs.open_replies()
        hold_s = self.hold_s(call.model)
        created = now()
        job = build_job(
            call,
            job_id=new_id("job-"),
            reply_to=reply_to,
            deadline=created + hold_s,
            created=created,
            trace_id=ctx.trace_id,
            traceparent=ctx.traceparent,
            request_id=ctx.request_id,
        )
        submitted = False
        try:
            await self.jobs.submit(job)
            submitted = True
        except JobQueueUnavailableError as exc:
            log.error("%s", exc)
            raise errors.jobs_unavailable(str(exc)) from exc
        finally:
            if not submitted:
                self.jobs.close_replies(reply_to)
        self.metrics.in_flight.inc()
        return JobRun(self, job, queue, hold_s=hold_s, started=started, caller=caller)


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
    ) -> None:
        self._d = dispatcher
        self.caller = caller
        self.job = job
        self._queue = queue
        self._hold_s = hold_s
        self._started = started
        self._last_token = 0.0
        self.finished = False  # the end marker or a final error arrived
        self.disconnected = False
        self._closed = False

    @property
    def model(self) -> str:
        return self.job.model

    def client_gone(self) -> None:
        """Called when the HTTP client disconnects: wake the reader, which cancels."""
        if not self.finished and not self.disconnected:
            self.disconnected = True
            self._queue.put_nowait(_CLIENT_GONE)

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
                if not accepted and not d.view.ready_count(model):
                    if not waiting:
                        waiting = True
                        d.demand.enter(model)
                    if d.demand.due(model, time.monotonic()):
                        await self._publish_demand()
                    wait = min(remaining, interval)
                try:
                    async with asyncio.timeout(wait):
                        reply = await self._queue.get()
                except TimeoutError:
                    continue
                if self.disconnected:
                    raise ClientGoneError
                if isinstance(reply, TokenChunk):
                    self._last_token = time.perf_counter()
                    d.metrics.ttft.observe(self._last_token - self._started)
                    return reply
                if isinstance(reply, JobEnd):
                    self.finished = True
                    return reply
                if isinstance(reply, JobAccepted):
                    accepted = True
                    hold_until = max(hold_until, time.monotonic() + d.timeouts.token_idle_s)
                    continue
                if await self._retry(reply):
                    accepted = False
                    continue
                self.finished = True
                raise errors.from_job_error(reply.code, reply.message, model)
        finally:
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
            if self.disconnected:
                raise ClientGoneError
            if isinstance(reply, TokenChunk):
                t = time.perf_counter()
                self._d.metrics.inter_token.observe(t - self._last_token)
                self._last_token = t
                return reply
            if isinstance(reply, JobEnd | JobError):
                self.finished = True
                return reply
            # a JobAccepted here (e.g. a duplicate delivery) carries nothing for the client

    async def close(self) -> None:
        """Stop routing replies; cancel the job unless it ended. Idempotent."""
        if self._closed:
            return
        self._closed = True
        d = self._d
        d.jobs.close_replies(self.job.reply_to)
        d.admission.release(self.caller)
        d.metrics.in_flight.dec()
        if not self.finished:
            d.metrics.cancels.inc()
            await d.jobs.cancel(self.job.job_id)
            log.info("job %s cancelled", self.job.job_id)
