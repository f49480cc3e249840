"""The node's command consumer: pull, execute concurrently, answer with an event, ack.

Commands arrive on the node's durable pull consumer (explicit ack), so an
agent that was down gets them when it returns. Each command runs in its own
task (at most ``max_commands`` at once) while in-progress acks keep JetStream
from redelivering it. A command is acked only after its outcome is recorded
and its result event (command.done / command.failed) is published; a command
seen again (redelivered, or sent twice) does nothing and is answered from the
ledger with ``duplicate=True``. Undecodable messages are counted, logged and
terminated, so they never block the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from migserve_shared import subjects
from migserve_shared.bus import EventPublisher
from migserve_shared.errors import BadMessageError, ErrorCode
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    Command,
    CommandDone,
    CommandFailed,
    CreateInstance,
    decode_command,
    now,
)
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from migserve_agent.instances import InstanceManager
from migserve_agent.ledger import CommandLedger, Outcome
from migserve_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)


def command_type(cmd: Command) -> str:
    return str(type(cmd).__struct_config__.tag)


class CommandConsumer:
    """Executes the commands sent to one node."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        node: str,
        instances: InstanceManager,
        ledger: CommandLedger,
        events: EventPublisher,
        metrics: AgentMetrics,
        max_commands: int,
        ack_wait_s: float,
        shutdown_timeout_s: float,
        create_max_age_s: float = 600.0,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self._js = js
        self._node = node
        self._instances = instances
        self._ledger = ledger
        self._events = events
        self._metrics = metrics
        self._max_commands = max_commands
        self._ack_wait_s = ack_wait_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._create_max_age_s = create_max_age_s
        self._fetch_timeout_s = fetch_timeout_s
        self._inflight: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish the commands in hand."""
        durable = await self._ensure_consumer()
        psub = await self._js.pull_subscribe_bind(durable, subjects.COMMANDS_STREAM)
        log.info("consuming commands for node %s (%s)", self._node, durable)
        try:
            while not stop.is_set():
                if len(self._tasks) >= self._max_commands:
                    await asyncio.wait(
                        self._tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                try:
                    msgs = await psub.fetch(1, timeout=self._fetch_timeout_s)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except NatsError as exc:
                    log.warning("fetching commands failed: %r; retrying", exc)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg), name="agent-command")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            await self._finish_in_hand()
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _finish_in_hand(self) -> None:
        if not self._tasks:
            return
        log.info("finishing %d command(s) in hand", len(self._tasks))
        _, pending = await asyncio.wait(self._tasks, timeout=self._shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d command(s) did not finish in %.0fs; they will be redelivered",
                        len(pending), self._shutdown_timeout_s)  # fmt: skip
            await asyncio.gather(*pending, return_exceptions=True)

    async def _ensure_consumer(self) -> str:
        durable = subjects.agent_consumer(self._node)
        config = ConsumerConfig(
            # with a name, the create subject carries the filter: NATS permissions
            # let this node's user create only this consumer (migserve_shared.permissions)
            name=durable,
            durable_name=durable,
            filter_subject=subjects.agent_commands(self._node),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1000,
        )
        try:
            await self._js.add_consumer(subjects.COMMANDS_STREAM, config=config)
        except BadRequestError as exc:
            log.warning("command consumer %s exists with other settings (%s); using it",
                        durable, exc)  # fmt: skip
        return durable

    async def _handle(self, msg: Msg) -> None:
        try:
            cmd = decode_command(msg.data)
        except BadMessageError as exc:
            self._metrics.bad_commands.inc()
            log.warning("terminating an undecodable command on %s: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        model = cmd.model.model_id if isinstance(cmd, CreateInstance) else None
        with log_context(
            trace_id=cmd.trace_id, model=model, instance=cmd.instance_id, command=cmd.command_id
        ):
            keepalive = asyncio.create_task(self._keep_alive(msg), name="agent-command-keepalive")
            try:
                outcome = await self._execute(cmd)
                await self._reply(cmd, outcome)
                await msg.ack()
            except asyncio.CancelledError:  # shutting down before it finished
                log.warning("command %s interrupted; it will be redelivered", cmd.command_id)
                with contextlib.suppress(Exception):
                    await asyncio.shield(msg.nak())
                raise
            except Exception as exc:
                log.warning("command %s not finished (%r); it will be redelivered",
                            cmd.command_id, exc)  # fmt: skip
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the command is still being worked on."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.debug("in-progress ack failed: %r", exc)

    async def _execute(self, cmd: Command) -> Outcome:
        kind = command_type(cmd)
        while True:
            prior = self._ledger.get(cmd.command_id)
            if prior is not None:
                log.info("command %s was already executed; answering as a duplicate",
                         cmd.command_id)  # fmt: skip
                self._metrics.commands.labels(kind, "duplicate").inc()
                return msgspec.structs.replace(prior, duplicate=True)
            running = self._inflight.get(cmd.command_id)
            if running is None:
                break
            await running.wait()  # the same command twice at once: wait, then answer from ledger
        done = asyncio.Event()
        self._inflight[cmd.command_id] = done
        try:
            outcome = await self._run(cmd)
            self._ledger.record(outcome)
        finally:
            del self._inflight[cmd.command_id]
            done.set()
        label = "duplicate" if outcome.duplicate else ("done" if outcome.ok else "failed")
        self._metrics.commands.labels(kind, label).inc()
        return outcome

    async def _run(self, cmd: Command) -> Outcome:
        if isinstance(cmd, CreateInstance):
            age = now() - cmd.issued_at
            if cmd.issued_at and age > self._create_max_age_s:
                reason = f"command is {age:.0f}s old (limit {self._create_max_age_s:.0f}s)"
                log.warning("not executing stale CreateInstance %s: %s", cmd.command_id, reason)
                return Outcome(
                    command_id=cmd.command_id,
                    ok=False,
                    instance_id=cmd.instance_id,
                    code=ErrorCode.TIMEOUT,
                    reason=reason,
                    at=now(),
                )
            return await self._instances.create(cmd)
        return await self._instances.retire(cmd)

    async def _reply(self, cmd: Command, outcome: Outcome) -> None:
        if outcome.ok:
            await self._events.publish(
                CommandDone(
                    command_id=cmd.command_id,
                    node=self._node,
                    instance_id=outcome.instance_id,
                    duplicate=outcome.duplicate,
                    trace_id=cmd.trace_id,
                )
            )
        else:
            await self._events.publish(
                CommandFailed(
                    command_id=cmd.command_id,
                    node=self._node,
                    code=outcome.code or ErrorCode.INTERNAL,
                    reason=outcome.reason,
                    instance_id=outcome.instance_id,
                    trace_id=cmd.trace_id,
                )
            )
