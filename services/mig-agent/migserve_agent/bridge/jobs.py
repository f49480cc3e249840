"""Handle one job message: decode, check, stream it through the engine, reply, settle.

The JetStream message is acknowledged when the first token arrives (or at the
end when none does): until then, a failure hands the job back (nak, offered
again after ``HAND_BACK_DELAY_S``, once this bridge's own pulls were cut
short by its closed gate) so another instance takes it, bounded by
``--max-attempts`` deliveries. After the
first token, a failure can only end the stream with an error reply.

Replies go to ``job.reply_to`` in order: ``accepted``, ``token``..., then one
``end`` or ``error``. The token path does only what it must: per token a
histogram observation; per read from the engine one clock read, one encode
and one publish (no flush). The tokens that one read brings (a busy engine or
bridge falls behind and reads several at once) travel as one ``TokenChunk``
whose ``index`` is that of its first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from migserve_shared import subjects
from migserve_shared.bus import ReplySender
from migserve_shared.errors import BadMessageError, ErrorCode
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    InferenceJob,
    JobAccepted,
    JobEnd,
    JobError,
    JobReply,
    TokenChunk,
    decode_job,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from migserve_agent.bridge.dialect import normalize_finish_reason
from migserve_agent.bridge.engine import EngineClient
from migserve_agent.bridge.errors import EngineError
from migserve_agent.bridge.gate import EngineGate
from migserve_agent.bridge.metrics import BridgeMetrics
from migserve_agent.bridge.policy import (
    FailureAction,
    is_expired,
    is_reply_subject,
    on_engine_failure,
)
from migserve_agent.bridge.running import RecentCancels, RunningJob, RunningJobs
from migserve_agent.bridge.settings import BridgeSettings
from migserve_agent.bridge.slots import HAND_BACK_DELAY_S
from migserve_agent.bridge.sse import Finish, Usage

log = logging.getLogger(__name__)


class _ReplyToOnly(msgspec.Struct):
    reply_to: str = ""


_decode_reply_to = msgspec.json.Decoder(_ReplyToOnly).decode


class JobHandler:
    """Runs the jobs of one bridge; one ``handle`` call per message, from any slot."""

    def __init__(
        self,
        *,
        nc: NATS,
        engine: EngineClient,
        settings: BridgeSettings,
        metrics: BridgeMetrics,
        running: RunningJobs,
        cancels: RecentCancels,
        gate: EngineGate,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._running = running
        self._cancels = cancels
        self._gate = gate
        self._clock = clock
        self._instance = settings.instance_id
        #: tell JetStream the job is still being worked on this often until it is acked
        self._keepalive_s = max(settings.ack_wait_s / 2, 0.5)

    async def handle(self, msg: Msg) -> None:
        """Handle one delivered job message to its end; never raises for a bad job."""
        try:
            job = decode_job(msg.data)
        except BadMessageError as exc:
            await self._drop_bad(msg, str(exc), _reply_to_of(msg.data))
            return
        if not is_reply_subject(job.reply_to):
            await self._drop_bad(msg, f"job {job.job_id}: reply_to {job.reply_to!r} is no subject")
            return
        if job.model != self._settings.model:
            reason = f"job {job.job_id} for model {job.model!r} reached {self._settings.model!r}"
            await self._drop_bad(msg, reason, job.reply_to)
            return
        with log_context(
            trace_id=job.trace_id, model=job.model, instance=self._instance, job_id=job.job_id
        ):
            await self._take(msg, job)

    async def _drop_bad(self, msg: Msg, reason: str, reply_to: str | None = None) -> None:
        self._metrics.job("bad")
        log.warning("dropping a bad job message: %s", reason)
        await _settle(msg.term, "terminate")
        if reply_to:
            error = JobError(code=ErrorCode.BAD_MESSAGE, message=reason, instance_id=self._instance)
            await self._reply(reply_to, error)

    async def _take(self, msg: Msg, job: InferenceJob) -> None:
        sender = ReplySender(self._nc, job.reply_to)
        cancel_subject = subjects.cancel(job.job_id)
        now = self._clock()
        if self._cancels.seen(cancel_subject, now):
            await _settle(msg.ack, "ack")
            self._metrics.job("cancelled")
            log.info("job was cancelled before it was taken; dropped")
            await sender.send(JobEnd(finish_reason="cancelled", instance_id=self._instance))
            return
        if is_expired(job.deadline, now):
            await _settle(msg.ack, "ack")
            self._metrics.job("expired")
            log.info("job expired %.3f s before it was taken; dropped", now - job.deadline)
            await sender.send(
                JobError(
                    code=ErrorCode.TIMEOUT,
                    message="expired before an instance took it",
                    instance_id=self._instance,
                )
            )
            return
        run = RunningJob(job_id=job.job_id, cancel_subject=cancel_subject)
        self._running.add(run)
        self._metrics.in_flight.inc()
        try:
            await self._run(msg, job, run, sender)
        finally:
            self._running.remove(run)
            self._metrics.in_flight.dec()

    async def _run(self, msg: Msg, job: InferenceJob, run: RunningJob, sender: ReplySender) -> None:
        """Stream in a task of its own, so a cancel or the drain can stop it."""
        task = asyncio.create_task(
            self._stream(msg, job, run, sender), name=f"bridge-job-{job.job_id}"
        )
        run.stop = task.cancel
        try:
            # after the stream task was scheduled, so the engine request goes out first
            await self._accepted(sender)
            while not task.done():
                await asyncio.wait((task,), timeout=self._keepalive_s)
                if not task.done() and not run.settled:
                    await _settle(msg.in_progress, "extend the ack wait of")
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        if task.cancelled():
            await self._aborted(msg, run, sender)
        elif (exc := task.exception()) is not None:
            await self._bridge_failed(msg, job, run, exc)

    async def _accepted(self, sender: ReplySender) -> None:
        try:
            await sender.send(JobAccepted(instance_id=self._instance, node=self._settings.node))
        except Exception as exc:  # the stream may still reach the client: carry on
            log.warning("could not send the job's acceptance: %s", exc)

    async def _bridge_failed(
        self, msg: Msg, job: InferenceJob, run: RunningJob, exc: BaseException
    ) -> None:
        """A bug or a lost NATS connection, not the engine: the same rules, best effort."""
        log.error("job failed in the bridge", exc_info=exc)
        delivered = _delivered(msg)
        action = on_engine_failure(
            tokens_sent=run.tokens,
            retryable=True,
            delivered=delivered,
            max_attempts=self._settings.max_attempts,
        )
        if action is FailureAction.RETRY and not run.settled:
            await _settle(functools.partial(msg.nak, delay=HAND_BACK_DELAY_S), "nak")
            self._metrics.job("retried")
            return
        if not run.settled:
            await _settle(msg.ack, "ack")
        self._metrics.job("error")
        error = JobError(
            code=ErrorCode.INTERNAL,
            message=f"the bridge failed after {run.tokens} tokens: {exc!r}",
            instance_id=self._instance,
        )
        await self._reply(job.reply_to, error)

    async def _stream(
        self, msg: Msg, job: InferenceJob, run: RunningJob, sender: ReplySender
    ) -> None:
        metrics = self._metrics
        observe_gap = metrics.inter_token.observe
        count_tokens = metrics.tokens.inc
        send = sender.send
        clock = time.perf_counter
        started = last = clock()
        index = 0
        finish: str | None = None
        usage: Usage | None = None
        try:
            async with contextlib.aclosing(self._engine.stream_batches(job)) as batches:
                async for batch in batches:
                    # the tokens of one read go out as one reply: no wait is added, and a
                    # busy bridge sends fewer, larger messages instead of falling behind
                    texts: list[str] = []
                    now = clock()
                    for event in batch:
                        if type(event) is str:
                            if index or texts:
                                observe_gap(now - last)
                            else:
                                metrics.ttft.observe(now - started)
                            last = now
                            texts.append(event)
                        elif type(event) is Finish:
                            finish = event.reason
                        elif type(event) is Usage:
                            usage = event
                    if not texts:
                        continue
                    if not run.settled:
                        await _settle(msg.ack, "ack")
                        run.settled = True
                    text = texts[0] if len(texts) == 1 else "".join(texts)
                    await send(TokenChunk(text=text, index=index, count=len(texts)))
                    index += len(texts)
                    run.tokens = index
                    count_tokens(len(texts))
        except EngineError as exc:
            await self._engine_failed(msg, run, sender, exc)
            return
        if not run.settled:
            await _settle(msg.ack, "ack")
            run.settled = True
        metrics.job("done")
        log.debug("job done: %d tokens in %.3f s", index, clock() - started)
        await send(
            JobEnd(
                finish_reason=normalize_finish_reason(finish),
                prompt_tokens=usage.prompt_tokens if usage is not None else 0,
                completion_tokens=usage.completion_tokens if usage is not None else index,
                instance_id=self._instance,
                tokens_sent=index,
            )
        )

    async def _engine_failed(
        self, msg: Msg, run: RunningJob, sender: ReplySender, exc: EngineError
    ) -> None:
        delivered = _delivered(msg)
        action = on_engine_failure(
            tokens_sent=run.tokens,
            retryable=exc.retryable,
            delivered=delivered,
            max_attempts=self._settings.max_attempts,
        )
        if exc.retryable:
            self._gate.report_failure(str(exc))
        if action is FailureAction.RETRY:
            log.warning(
                "engine failed before the first token (delivery %d of %d); job handed back: %s",
                delivered,
                self._settings.max_attempts,
                exc,
            )
            await _settle(functools.partial(msg.nak, delay=HAND_BACK_DELAY_S), "nak")
            run.settled = True
            self._metrics.job("retried")
            return
        if not run.settled:
            await _settle(msg.ack, "ack")
            run.settled = True
        self._metrics.job("error")
        if action is FailureAction.GIVE_UP:
            code, text = (
                ErrorCode.ENGINE_UNAVAILABLE,
                f"no engine could start the job in {delivered} attempts; last error: {exc}",
            )
        elif action is FailureAction.REJECT:
            code, text = exc.code, str(exc)
        else:
            code, text = ErrorCode.ENGINE_FAILED, f"engine failed after {run.tokens} tokens: {exc}"
        log.warning("job failed (%s): %s", code.value, text)
        await sender.send(JobError(code=code, message=text, instance_id=self._instance))

    async def _aborted(self, msg: Msg, run: RunningJob, sender: ReplySender) -> None:
        if run.abort_reason == "cancelled":
            if not run.settled:
                await _settle(msg.ack, "ack")
            self._metrics.job("cancelled")
            log.info("job cancelled after %d tokens", run.tokens)
            reply: JobReply = JobEnd(
                finish_reason="cancelled", completion_tokens=run.tokens, instance_id=self._instance
            )
            await sender.send(reply)
            return
        if run.tokens == 0 and not run.settled:  # draining, nothing sent: another instance takes it
            await _settle(functools.partial(msg.nak, delay=HAND_BACK_DELAY_S), "nak")
            self._metrics.job("retried")
            log.info("bridge draining: job handed back before its first token")
            return
        if not run.settled:
            await _settle(msg.ack, "ack")
        self._metrics.job("error")
        log.warning("bridge draining: job cut off after %d tokens", run.tokens)
        await sender.send(
            JobError(
                code=ErrorCode.DRAINING,
                message=f"instance {self._instance} is shutting down; "
                f"the stream was cut after {run.tokens} tokens",
                retryable=True,
                instance_id=self._instance,
            )
        )

    async def _reply(self, reply_to: str, reply: JobReply) -> None:
        try:
            await ReplySender(self._nc, reply_to).send(reply)
        except Exception as exc:
            log.warning("could not send a reply to %s: %s", reply_to, exc)


async def _settle(action: Callable[[], Awaitable[None]], what: str) -> None:
    """Ack, nak, term or extend a message; a failure (connection lost) is logged only."""
    try:
        await action()
    except Exception as exc:
        log.warning("could not %s the job message: %s", what, exc)


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _reply_to_of(data: bytes) -> str | None:
    """The reply subject of an undecodable job, if it has a usable one."""
    try:
        reply_to = _decode_reply_to(data).reply_to
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return reply_to if is_reply_subject(reply_to) else None
