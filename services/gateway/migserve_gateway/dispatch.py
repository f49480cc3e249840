"""One job's life on the bus: submit, hold for the first reply, stream, cancel.

The request path, kept small because it is benchmarked: no subscription per
request (replies come through the job client's shared router), one
JetStream publish, one queue read per reply.

Limits, before anything is published: the caller's rate (``core.ratelimit``),
the in-flight bounds (``core.admission``) and, for a model without a ready
instance, the cold-start queue (``core.holding``). Each refusal is counted.

Holding: while the model has no ready instance, the request waits up to the
cold-start timeout and a ``Demand`` event is published for the model at most
once per demand interval while any request for it waits. A retryable error
before the first token re-publishes the job once (``attempts + 1``). A job
that ends without its end marker (timeout, stall, client gone) is cancelled.

Lost instances: the run remembers the instance that accepted it. When the
live view says that instance failed, stopped or vanished, a run that already
streamed tokens ends at once with an ENGINE_FAILED error (its bridge acked
the job, so nothing would ever come). A run still waiting for its first
token keeps waiting: its job was not acked, so JetStream hands it to another
instance once the ack wait runs out (the bridge's --ack-wait-s).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from migserve_shared.ids import new_id
from migserve_shared.messages import (
    now,
)

from migserve_gateway.adapters.jobs import JobClient, JobQueueUnavailableError
from migserve_gateway.core import errors
from migserve_gateway.core.admission import Admission, AdmissionLimits
from migserve_gateway.core.auth import ANONYMOUS
from migserve_gateway.core.chat import ChatCall, build_job
from migserve_gateway.core.demand import DemandBook
from migserve_gateway.core.errors import ApiError
from migserve_gateway.core.holding import ColdHolds, HoldLimits
from migserve_gateway.core.ratelimit import KeyRateLimiter, RateLimits
from migserve_gateway.core.tracing import RequestContext
from migserve_gateway.core.view import LiveView
from migserve_gateway.jobrun import ClientGoneError, JobRun
from migserve_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

__all__ = ["ClientGoneError", "DispatchTimeouts", "Dispatcher", "JobRun"]


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
        holds: HoldLimits | None = None,
        rates: RateLimits | None = None,
    ) -> None:
        self.jobs = jobs
        self.admission = Admission(admission or AdmissionLimits())
        self.holds = ColdHolds(holds or HoldLimits())
        self.rates = KeyRateLimiter(rates or RateLimits())
        self.view = view
        self.timeouts = timeouts
        self.metrics = metrics
        self.demand = DemandBook(timeouts.demand_interval_s)
        #: instance id -> the runs it accepted and has not finished
        self._by_instance: dict[str, set[JobRun]] = {}
        view.on_instance_down(self.instance_down)

    def hold_s(self, model: str) -> float:
        """How long a new job may wait for its first reply."""
        if self.view.ready_count(model):
            return self.timeouts.queue_s
        return self.timeouts.cold_start_s

    async def submit(
        self, call: ChatCall, ctx: RequestContext, *, started: float, caller: str = ANONYMOUS
    ) -> JobRun:
        """Publish the job for ``call``; ApiError(503) when the queue is unreachable.

        ApiError 429 (with Retry-After) when ``caller`` is over its rate or
        concurrency, 503 when the gateway is at its in-flight bound or too
        many requests already wait for the model's first instance. The slots
        are released when the run closes.
        """
        held = not self.view.ready_count(call.model)
        try:
            self.rates.take(caller, time.monotonic())
            self.admission.admit(caller)
        except ApiError as err:
            self.metrics.refused.labels(reason=err.reason).inc()
            raise
        try:
            if held:
                try:
                    self.holds.hold(call.model)
                except ApiError as err:
                    self.metrics.refused.labels(reason=err.reason).inc()
                    raise
                self.metrics.cold_held.inc()
            try:
                return await self._submit(call, ctx, started=started, caller=caller, held=held)
            except BaseException:
                if held:
                    self.release_hold(call.model)
                raise
        except BaseException:
            self.admission.release(caller)
            raise

    def release_hold(self, model: str) -> None:
        self.holds.release(model)
        self.metrics.cold_held.dec()

    def instance_down(self, instance_id: str) -> None:
        """The live view lost ``instance_id``: end the streams it was serving."""
        for run in self._by_instance.pop(instance_id, ()):
            run.instance_lost(instance_id)

    def track(self, run: JobRun, old: str | None, new: str | None) -> None:
        """Move ``run`` from the runs of instance ``old`` to those of ``new``."""
        if old is not None:
            runs = self._by_instance.get(old)
            if runs is not None:
                runs.discard(run)
                if not runs:
                    del self._by_instance[old]
        if new is not None:
            self._by_instance.setdefault(new, set()).add(run)

    async def _submit(
        self, call: ChatCall, ctx: RequestContext, *, started: float, caller: str, held: bool
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
        return JobRun(self, job, queue, hold_s=hold_s, started=started, caller=caller, held=held)
