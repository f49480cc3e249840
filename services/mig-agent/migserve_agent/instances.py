"""Instances on this node: create (slice, engine, bridge), retire, and clean up failures.

Each step is evented with the command's trace id and reflected in the
instance's KV record. Operations on one instance are serialized (a retire that
arrives while its create still runs waits for it); different instances
proceed concurrently, and slice changes are serialized per GPU by the
``SliceManager``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from migserve_shared import mig
from migserve_shared.bus import EventPublisher
from migserve_shared.errors import (
    ErrorCode,
    InsufficientResourcesError,
    MigserveError,
    NotSupportedError,
)
from migserve_shared.logs import log_context
from migserve_shared.messages import (
    CreateInstance,
    InstanceDraining,
    InstanceFailed,
    InstanceReady,
    InstanceRecord,
    InstanceStarting,
    InstanceState,
    InstanceStopped,
    RetireInstance,
    now,
)

from migserve_agent.engines.registry import EngineRegistry
from migserve_agent.gpu.base import OwnedSlice
from migserve_agent.ledger import Outcome
from migserve_agent.locks import KeyedLocks
from migserve_agent.metrics import AgentMetrics
from migserve_agent.runtime.base import InstanceLaunch, Runtime
from migserve_agent.slices import SliceManager
from migserve_agent.store import InstanceStore

log = logging.getLogger(__name__)

E = TypeVar("E", InstanceStarting, InstanceReady, InstanceDraining, InstanceStopped, InstanceFailed)


def describe(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and message an exception travels as."""
    if isinstance(exc, MigserveError):
        return exc.code, str(exc)
    return ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"


@dataclass
class _Made:
    """What a create got to, so a failure undoes exactly that."""

    slice: OwnedSlice | None = None
    record: InstanceRecord | None = None


class InstanceManager:
    """The instances this agent runs, by instance id."""

    def __init__(
        self,
        *,
        node: str,
        slices: SliceManager,
        runtime: Runtime,
        engines: EngineRegistry,
        store: InstanceStore,
        events: EventPublisher,
        metrics: AgentMetrics,
        ready_timeout_s: float,
        failure_drain_s: float = 5.0,
    ) -> None:
        self._node = node
        self._slices = slices
        self._runtime = runtime
        self._engines = engines
        self._store = store
        self._events = events
        self._metrics = metrics
        self._ready_timeout_s = ready_timeout_s
        self._failure_drain_s = failure_drain_s
        self._instances: dict[str, InstanceRecord] = {}
        self._locks = KeyedLocks()

    # Views -------------------------------------------------------------------------
    def records(self) -> list[InstanceRecord]:
        return list(self._instances.values())

    def busy(self, instance_id: str) -> bool:
        """Whether a command or a cleanup is working on the instance."""
        return self._locks.busy(instance_id)

    def adopt(self, record: InstanceRecord) -> None:
        """Take over a running instance found at start-up."""
        self._instances[record.instance_id] = record
        self._metrics.instances.set(len(self._instances))

    # Create ------------------------------------------------------------------------
    async def create(self, cmd: CreateInstance) -> Outcome:
        async with self._locks.hold(cmd.instance_id):
            existing = self._instances.get(cmd.instance_id)
            if existing is not None:
                log.info("instance %s already exists (%s); nothing to do", cmd.instance_id,
                         existing.state)  # fmt: skip
                return _done(cmd.command_id, cmd.instance_id, duplicate=True)
            made = _Made()
            try:
                await self._create(cmd, made)
            except Exception as exc:
                code, reason = describe(exc)
                log.warning("creating instance %s failed (%s): %s", cmd.instance_id, code, reason,
                            exc_info=code is ErrorCode.INTERNAL)  # fmt: skip
                await self._undo_create(cmd, made, code, reason)
                return _failed(cmd.command_id, cmd.instance_id, code, reason)
            return _done(cmd.command_id, cmd.instance_id)

    async def _create(self, cmd: CreateInstance, made: _Made) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        spec = cmd.model
        adapter = self._engines.get(spec.engine)
        gpu = await self._slices.gpu(cmd.gpu_index)
        if not gpu.mig_enabled:
            raise NotSupportedError(f"MIG is not enabled on GPU {gpu.index} of {self._node}")
        profile = mig.gpu_model(gpu.name).profile(cmd.profile)
        if spec.memory_mb > profile.memory_mb:
            raise InsufficientResourcesError(
                f"model {spec.model_id} needs {spec.memory_mb} MB; "
                f"{profile.name} has {profile.memory_mb} MB"
            )
        slots = adapter.slots(spec, profile)
        host, port = self._runtime.endpoint()
        engine = adapter.launch(spec=spec, profile=profile, host=host, port=port, slots=slots)

        info = await self._slices.create(
            gpu_index=gpu.index,
            profile=profile.name,
            start=cmd.start,
            instance_id=cmd.instance_id,
            trace_id=cmd.trace_id,
        )
        made.slice = self._slices.ownership.get(info.uuid)
        record = InstanceRecord(
            instance_id=cmd.instance_id,
            model_id=spec.model_id,
            node=self._node,
            gpu_index=gpu.index,
            gpu_uuid=gpu.uuid,
            profile=info.profile,
            start=info.start,
            slice_uuid=info.uuid,
            engine=spec.engine,
            state="starting",
            slots=slots,
            plan_id=cmd.plan_id,
            trace_id=cmd.trace_id,
            created=now(),
            updated=now(),
        )
        await self._put(record)
        made.record = record
        await self._events.publish(self._event(InstanceStarting, record))

        launch = InstanceLaunch(
            instance_id=cmd.instance_id,
            model_id=spec.model_id,
            node=self._node,
            engine_kind=spec.engine,
            engine=engine,
            host=host,
            port=port,
            slice_uuid=info.uuid,
            slots=slots,
            profile=profile.name,
        )
        running = await self._runtime.start(launch, ready_timeout_s=self._ready_timeout_s)
        record = msgspec.structs.replace(
            record,
            state="ready",
            engine_url=running.engine_url,
            bridge_metrics_url=running.bridge_metrics_url,
            engine_pid=running.engine_pid,
            bridge_pid=running.bridge_pid,
            updated=now(),
        )
        await self._put(record)
        startup_s = loop.time() - began
        await self._events.publish(self._event(InstanceReady, record, startup_s=startup_s))
        log.info("instance %s ready at %s after %.2fs", record.instance_id, record.engine_url,
                 startup_s)  # fmt: skip

    async def _undo_create(
        self, cmd: CreateInstance, made: _Made, code: ErrorCode, reason: str
    ) -> None:
        self._metrics.instance_failures.inc()
        with _logged("stopping the processes of failed instance %s", cmd.instance_id):
            await self._runtime.stop(cmd.instance_id, drain_timeout_s=self._failure_drain_s)
        if made.slice is not None:
            with _logged("destroying the slice of failed instance %s", cmd.instance_id):
                await self._slices.destroy(
                    made.slice,
                    reason=f"instance {cmd.instance_id} failed to start",
                    trace_id=cmd.trace_id,
                )
        if made.record is not None:
            with _logged("removing the record of failed instance %s", cmd.instance_id):
                await self._remove(made.record, state="failed", reason=reason)
        self._forget(cmd.instance_id)
        await self._events.publish(
            InstanceFailed(
                instance_id=cmd.instance_id,
                model_id=cmd.model.model_id,
                node=self._node,
                profile=cmd.profile,
                reason=reason,
                code=code,
                trace_id=cmd.trace_id,
            )
        )

    # Retire ------------------------------------------------------------------------
    async def retire(self, cmd: RetireInstance) -> Outcome:
        async with self._locks.hold(cmd.instance_id):
            record = self._instances.get(cmd.instance_id)
            if record is None:
                stale = await self._store.get(cmd.instance_id)
                if stale is not None and stale.node == self._node:
                    await self._store.delete(cmd.instance_id)
                log.info("instance %s is not running here; nothing to retire", cmd.instance_id)
                return _done(cmd.command_id, cmd.instance_id, duplicate=True)
            try:
                await self._retire(cmd, record)
            except Exception as exc:
                code, reason = describe(exc)
                log.warning("retiring instance %s failed (%s): %s", cmd.instance_id, code, reason,
                            exc_info=code is ErrorCode.INTERNAL)  # fmt: skip
                return _failed(cmd.command_id, cmd.instance_id, code, reason)
            return _done(cmd.command_id, cmd.instance_id)

    async def _retire(self, cmd: RetireInstance, record: InstanceRecord) -> None:
        trace_id = cmd.trace_id or record.trace_id
        record = msgspec.structs.replace(record, state="draining", updated=now())
        await self._put(record)
        await self._events.publish(self._event(InstanceDraining, record, trace_id=trace_id))
        await self._runtime.stop(record.instance_id, drain_timeout_s=cmd.drain_timeout_s)
        owned = self._slices.ownership.for_instance(record.instance_id)
        if owned is not None:
            await self._slices.destroy(
                owned, reason=f"instance {record.instance_id} retired", trace_id=trace_id
            )
        await self._events.publish(
            self._event(InstanceStopped, record, trace_id=trace_id, reason="retired")
        )
        await self._store.delete(record.instance_id)
        self._forget(record.instance_id)
        log.info("instance %s retired", record.instance_id)

    # Failures ------------------------------------------------------------------------
    async def fail(self, instance_id: str, *, reason: str, code: ErrorCode) -> None:
        """Clean up an instance whose processes died: stop the rest, free its slice."""
        async with self._locks.hold(instance_id):
            record = self._instances.get(instance_id)
            if record is None:
                return
            with log_context(trace_id=record.trace_id, model=record.model_id, instance=instance_id):
                log.warning("instance %s failed: %s", instance_id, reason)
                self._metrics.instance_failures.inc()
                await self._runtime.stop(instance_id, drain_timeout_s=self._failure_drain_s)
                owned = self._slices.ownership.for_instance(instance_id)
                if owned is not None:
                    with _logged("destroying the slice of failed instance %s", instance_id):
                        await self._slices.destroy(
                            owned,
                            reason=f"instance {instance_id} failed: {reason}",
                            trace_id=record.trace_id,
                        )
                await self._remove(record, state="failed", reason=reason)
                self._forget(instance_id)
                await self._events.publish(
                    self._event(InstanceFailed, record, reason=reason, code=code)
                )

    async def remove_stale(self, record: InstanceRecord, *, reason: str) -> None:
        """Remove a record found at start-up that cannot be adopted, and event it."""
        await self._remove(record, state="failed", reason=reason)
        await self._events.publish(
            self._event(InstanceFailed, record, reason=reason, code=ErrorCode.ENGINE_FAILED)
        )

    # Helpers -------------------------------------------------------------------------
    async def _put(self, record: InstanceRecord) -> None:
        await self._store.put(record)
        self._instances[record.instance_id] = record
        self._metrics.instances.set(len(self._instances))

    async def _remove(self, record: InstanceRecord, *, state: InstanceState, reason: str) -> None:
        """Write the final state (watchers see why), then delete the record."""
        final = msgspec.structs.replace(record, state=state, reason=reason, updated=now())
        await self._store.put(final)
        await self._store.delete(record.instance_id)

    def _forget(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)
        self._metrics.instances.set(len(self._instances))

    def _event(self, kind: type[E], record: InstanceRecord, **fields: Any) -> E:
        fields.setdefault("trace_id", record.trace_id)
        return kind(
            instance_id=record.instance_id,
            model_id=record.model_id,
            node=self._node,
            profile=record.profile,
            **fields,
        )


def _done(command_id: str, instance_id: str, *, duplicate: bool = False) -> Outcome:
    return Outcome(
        command_id=command_id, ok=True, instance_id=instance_id, duplicate=duplicate, at=now()
    )


def _failed(command_id: str, instance_id: str, code: ErrorCode, reason: str) -> Outcome:
    return Outcome(
        command_id=command_id, ok=False, instance_id=instance_id, code=code, reason=reason, at=now()
    )


@contextlib.contextmanager
def _logged(what: str, *args: object) -> Iterator[None]:
    """Log (and swallow) an error of one cleanup step, so the next step still runs."""
    try:
        yield
    except Exception:
        log.exception("cleanup failed: " + what, *args)
