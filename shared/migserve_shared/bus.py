"""NATS helpers shared by every service: connect, JetStream setup, events,
streamed job replies, and draining on the way out.

Jobs are published to the work-queue stream JOBS and pulled by the bridges
of the model (one outstanding pull per free engine slot: that is what makes
dispatch load-aware). Replies are core-NATS messages to an inbox owned by the
requester's ``ReplyRouter``, ending with ``JobEnd`` or ``JobError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)
from nats.js.errors import BadRequestError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from migserve_shared import subjects
from migserve_shared.connection import NatsConnectError, connect, connect_options
from migserve_shared.env import NatsSettings
from migserve_shared.errors import BadMessageError, ErrorCode
from migserve_shared.ids import new_id
from migserve_shared.jetstream import BUCKETS, DAY, STREAMS, ensure_jetstream, stream_changes
from migserve_shared.messages import (
    Command,
    Event,
    JobEnd,
    JobError,
    JobReply,
    decode_reply,
    encode,
    event_kind,
    event_subject_id,
)

__all__ = [
    "BUCKETS",
    "DAY",
    "STREAMS",
    "Buckets",
    "EventPublisher",
    "NatsConnectError",
    "NatsSettings",
    "ReplyRouter",
    "ReplySender",
    "connect",
    "connect_options",
    "drain_quietly",
    "ensure_jetstream",
    "ensure_jobs_consumer",
    "follow_bucket",
    "iterate_replies",
    "kv_values",
    "open_buckets",
    "send_command",
    "stream_changes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Buckets:
    models: KeyValue
    nodes: KeyValue
    instances: KeyValue
    plans: KeyValue
    leader: KeyValue


async def open_buckets(js: JetStreamContext) -> Buckets:
    return Buckets(
        models=await js.key_value(subjects.KV_MODELS),
        nodes=await js.key_value(subjects.KV_NODES),
        instances=await js.key_value(subjects.KV_INSTANCES),
        plans=await js.key_value(subjects.KV_PLANS),
        leader=await js.key_value(subjects.KV_LEADER),
    )


#: times ``kv_values`` asks for the keys before it believes a bucket has none
_NO_KEYS_CHECKS = 3


async def kv_values(kv: KeyValue) -> list[tuple[str, bytes, int]]:
    """Every live (key, value, revision) of a bucket (an empty bucket gives []).

    nats-py's ``KeyValue.keys()`` now and then raises NoKeysError for a bucket
    that has keys (its watcher may report "caught up" before its callback saw
    the messages already delivered: about 1 call in 300 here), which made an
    agent restart stop instances it should have adopted. "No keys" is believed
    only when ``keys()`` says so ``_NO_KEYS_CHECKS`` times in a row.
    """
    out: list[tuple[str, bytes, int]] = []
    keys: list[str] = []
    try:
        for _ in range(_NO_KEYS_CHECKS):
            try:
                keys = await kv.keys()
                break
            except NoKeysError:
                continue
    except Exception as exc:
        log.warning("listing the keys of a KV bucket failed: %r", exc)
        return out
    for key in keys:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue
        if entry.value:
            out.append((key, entry.value, entry.revision or 0))
    return out


#: (key, value or None when deleted, revision) -> None
EntrySink = Callable[[str, bytes | None, int], None]


async def follow_bucket(
    kv: KeyValue,
    sink: EntrySink,
    *,
    name: str,
    reconnects: Callable[[], int],
    stop: asyncio.Event | None = None,
    loaded: asyncio.Event | None = None,
    poll_s: float = 0.5,
    retry_s: float = 1.0,
) -> None:
    """Replay a bucket's current values into ``sink``, then follow every change.

    ``loaded`` is set once the replay is done. The watch is an ephemeral
    ordered consumer, which a restarted nats-server no longer has: whenever
    ``reconnects()`` changes (pass ``lambda: nc.stats["reconnects"]``) the watch
    starts again and replays the current values, deletes included, so the
    caller's view catches up. Runs until ``stop`` is set or it is cancelled.
    """
    while stop is None or not stop.is_set():
        seen = reconnects()
        try:
            watcher = await kv.watchall()
        except (NatsError, TimeoutError) as exc:
            log.warning("%s: starting the watch failed: %r; retrying", name, exc)
            if reconnects() == seen:
                await asyncio.sleep(retry_s)
            continue
        try:
            while reconnects() == seen and (stop is None or not stop.is_set()):
                try:
                    entry = await watcher.updates(timeout=poll_s)  # type: ignore[no-untyped-call]
                except TimeoutError:  # nats-py raises its own and asyncio's
                    continue
                if entry is None:  # the replay of current values is done
                    if loaded is not None:
                        loaded.set()
                    continue
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                sink(entry.key, None if deleted else (entry.value or b""), entry.revision or 0)
            if reconnects() != seen:
                log.info("%s: NATS reconnected; restarting the watch", name)
        except NatsError as exc:
            log.warning("%s: watch failed: %r; restarting", name, exc)
            await asyncio.sleep(retry_s)
        finally:
            with contextlib.suppress(NatsError, TimeoutError):
                await watcher.stop()  # type: ignore[no-untyped-call]


class EventPublisher:
    """Publishes events to the EVENTS stream, deduplicated by event id."""

    def __init__(self, js: JetStreamContext, *, source: str) -> None:
        self._js = js
        self._source = source

    async def publish(self, event: Event) -> None:
        if not event.source:
            event = msgspec.structs.replace(event, source=self._source)
        subject = subjects.event(event_kind(event), event_subject_id(event))
        await self._js.publish(subject, encode(event), headers={"Nats-Msg-Id": event.event_id})


async def send_command(js: JetStreamContext, node: str, command: Command) -> None:
    """Publish a command to a node's durable command stream (deduplicated by id)."""
    await js.publish(
        subjects.agent_commands(node), encode(command), headers={"Nats-Msg-Id": command.command_id}
    )


async def ensure_jobs_consumer(js: JetStreamContext, model_id: str, *, ack_wait: float) -> str:
    """Create the model's shared pull consumer on the JOBS stream; return its name."""
    durable = subjects.jobs_consumer(model_id)
    config = ConsumerConfig(
        # with a name, the create subject carries the filter (permissions check it)
        name=durable,
        durable_name=durable,
        filter_subject=subjects.infer(model_id),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=-1,
        max_waiting=4096,
    )
    try:
        await js.add_consumer(subjects.JOBS_STREAM, config=config)
    except BadRequestError:
        with contextlib.suppress(NotFoundError):
            await js.consumer_info(subjects.JOBS_STREAM, durable)
    return durable


class ReplyRouter:
    """One wildcard inbox subscription that routes streamed replies to waiting jobs.

    ``open()`` returns a fresh reply subject and a queue that receives the
    decoded replies for it. Undecodable replies become ``JobError``s so the
    waiting request ends with a clear reason instead of hanging.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        # under the connection's own inbox prefix: the only inboxes its user may read
        self._prefix = nc.new_inbox()
        self._queues: dict[str, asyncio.Queue[JobReply]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)
        await self._nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def open(self) -> tuple[str, asyncio.Queue[JobReply]]:
        token = new_id()
        queue: asyncio.Queue[JobReply] = asyncio.Queue()
        self._queues[token] = queue
        return f"{self._prefix}.{token}", queue

    def close(self, reply_to: str) -> None:
        self._queues.pop(reply_to.rsplit(".", 1)[-1], None)

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject.rsplit(".", 1)[-1])
        if queue is None:
            return
        if msg.headers and msg.headers.get("Status") == "503":
            return
        try:
            reply = decode_reply(msg.data)
        except BadMessageError as exc:
            reply = JobError(code=ErrorCode.BAD_MESSAGE, message=str(exc))
        queue.put_nowait(reply)


async def iterate_replies(
    queue: asyncio.Queue[JobReply], *, first_timeout: float, idle_timeout: float
) -> AsyncIterator[JobReply]:
    """Yield replies until the end marker; TimeoutError if the stream stalls."""
    timeout = first_timeout
    while True:
        reply = await asyncio.wait_for(queue.get(), timeout)
        yield reply
        if isinstance(reply, JobEnd | JobError):
            return
        timeout = idle_timeout


class ReplySender:
    """Publishes one job's replies, in order, to its reply inbox."""

    def __init__(self, nc: NATS, reply_to: str) -> None:
        self._nc = nc
        self._reply_to = reply_to

    async def send(self, reply: JobReply) -> None:
        await self._nc.publish(self._reply_to, encode(reply))


async def drain_quietly(nc: NATS) -> None:
    """Drain subscriptions (finishing in-flight callbacks), then close."""
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except Exception as exc:
        log.warning("nats drain failed: %s", exc)
        with contextlib.suppress(Exception):
            await nc.close()


Handler = Callable[[Msg], Awaitable[None]]
