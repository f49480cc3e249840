"""The simulated mig-agents: commands become slices, engines and events, with delays.

It follows ``migserve_agent.instances`` step by step, in simulated time:

- create: check the profile and the model's memory, place the slice (the MIG
  rules decide; a misfit fails with ``insufficient_resources`` like NVML),
  after ``slice_create_s`` publish ``slice.created``, write the instance
  record (starting) and publish ``instance.starting``; after
  ``engine_start_s`` the record turns ready, ``instance.ready`` and
  ``command.done`` follow. A failure publishes ``instance.failed`` and
  ``command.failed``.
- retire: record draining and ``instance.draining``; no new requests; when
  the last request in flight ends (or ``drain_timeout_s`` passes: the rest
  fail) the engine stops, after ``slice_destroy_s`` the slice is destroyed:
  ``slice.destroyed``, ``instance.stopped``, the record is deleted,
  ``command.done``. A retire that arrives while the create runs waits for it.
- every slice change rewrites the node's entry in the nodes bucket and
  publishes ``node.inventory``, as the agent's inventory does.
- commands are deduplicated by id as the command stream does (600 s window);
  one seen later is answered from the ledger with ``duplicate=True``.

Events reach the policy through the simulator's heap (never re-entrantly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
from migserve_shared.errors import ErrorCode, MigserveError
from migserve_shared.messages import (
    Command,
    CommandDone,
    CommandFailed,
    CreateInstance,
    Event,
    InstanceDraining,
    InstanceFailed,
    InstanceReady,
    InstanceRecord,
    InstanceStarting,
    InstanceStopped,
    NodeInventory,
    SliceCreated,
    SliceDestroyed,
)

from migserve_cli.sim.cluster import SliceRecord
from migserve_cli.sim.config import perf_for, slots_for
from migserve_cli.sim.instance import SimInstance

if TYPE_CHECKING:
    from migserve_cli.sim.simulator import Simulator

#: the command stream's duplicate window (``bus.STREAMS``)
COMMAND_DEDUP_S = 600.0


@dataclass(slots=True)
class AgentStats:
    #: engines started after time 0 (each one a cold start of its model)
    cold_starts: int = 0
    #: MIG slices created or destroyed after time 0
    reconfigurations: int = 0
    creates: int = 0
    retires: int = 0
    failures: int = 0
    #: requests cut off by a drain timeout
    drain_kills: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """Where a command's result goes (no command id: nobody asked)."""

    command_id: str = ""
    node: str = ""
    instance_id: str = ""
    trace_id: str = ""


@dataclass(slots=True, eq=False)
class _Work:
    """One instance as its agent knows it."""

    inst: SimInstance
    slice: SliceRecord
    node: str
    trace_id: str
    mig: bool
    record: InstanceRecord
    reply: Reply
    #: a retire that came while the create ran: (reply, drain timeout)
    pending_retire: tuple[Reply, float] | None = None
    duplicates: list[Reply] = field(default_factory=list)


class _Misfit(Exception):
    """The model does not fit the profile's memory."""


class SimAgent:
    """All nodes' agents; the simulator owns one."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.stats = AgentStats()
        self._work: dict[str, _Work] = {}
        self._seen: dict[str, float] = {}
        self._ledger: dict[str, tuple[bool, ErrorCode, str]] = {}

    # Events ---------------------------------------------------------------------
    def emit(self, kind: type[Any], **fields: Any) -> None:
        sim = self.sim
        event: Event = kind(
            event_id=sim.new_id("evt-"), time=sim.abs_now, source="sim-agent", **fields
        )
        sim.at(sim.now, partial(sim.controller.on_agent_event, sim, event))

    def _instance_event(self, kind: type[Any], work: _Work, **fields: Any) -> None:
        inst = work.inst
        fields.setdefault("trace_id", work.trace_id)
        self.emit(
            kind,
            instance_id=inst.instance_id,
            model_id=inst.model,
            node=work.node,
            profile=inst.profile,
            **fields,
        )

    def _answer(
        self,
        reply: Reply,
        *,
        ok: bool = True,
        code: ErrorCode = ErrorCode.INTERNAL,
        reason: str = "",
        duplicate: bool = False,
    ) -> None:
        if not reply.command_id:
            return
        self._ledger[reply.command_id] = (ok, code, reason)
        common = {
            "command_id": reply.command_id,
            "node": reply.node,
            "instance_id": reply.instance_id,
            "trace_id": reply.trace_id,
        }
        if ok:
            self.emit(CommandDone, duplicate=duplicate, **common)
        else:
            self.emit(CommandFailed, code=code, reason=reason, **common)

    # Commands from the scaler ---------------------------------------------------------
    def execute(self, node: str, command: Command) -> None:
        """A command published to ``node``'s stream (dropped if a duplicate in the window)."""
        sim = self.sim
        first = self._seen.get(command.command_id)
        if first is not None and sim.now - first < COMMAND_DEDUP_S:
            return
        self._seen[command.command_id] = sim.now
        reply = Reply(command.command_id, node, command.instance_id, command.trace_id)
        prior = self._ledger.get(command.command_id)
        if prior is not None:
            ok, code, reason = prior
            self._answer(reply, ok=ok, code=code, reason=reason, duplicate=True)
        elif isinstance(command, CreateInstance):
            self.create(
                instance_id=command.instance_id,
                model_id=command.model.model_id,
                gpu=sim.cluster.gpu_index(node, command.gpu_index),
                profile=command.profile,
                start=command.start,
                reply=reply,
                plan_id=command.plan_id,
            )
        else:
            self.retire(command.instance_id, reply=reply, drain_timeout_s=command.drain_timeout_s)

    # Create --------------------------------------------------------------------------
    def create(
        self,
        *,
        instance_id: str,
        model_id: str,
        gpu: int | None,
        profile: str,
        start: int,
        reply: Reply | None = None,
        plan_id: str = "",
        prewarmed: bool = False,
        mig: bool = True,
    ) -> None:
        """Create a slice and start an engine; ``prewarmed`` ones exist at once
        (static deployments), ``mig=False`` is a whole GPU without MIG."""
        sim = self.sim
        reply = reply or Reply(instance_id=instance_id)
        existing = self._work.get(instance_id)
        if existing is not None:
            if existing.inst.status in ("creating", "starting"):
                existing.duplicates.append(reply)
            else:
                self._answer(reply, duplicate=True)
            return
        try:
            if gpu is None:
                raise _Misfit(f"{reply.node} has no such GPU")
            model = sim.models[model_id]
            prof = sim.cluster.model.profile(profile)
            if model.spec.memory_mb > prof.memory_mb:
                raise _Misfit(
                    f"model {model_id} needs {model.spec.memory_mb} MB; "
                    f"{prof.name} has {prof.memory_mb} MB"
                )
            rec = sim.cluster.place(
                gpu, profile, start, instance_id=instance_id, model=model_id, now=sim.now
            )
        except (MigserveError, _Misfit, KeyError) as exc:
            code = exc.code if isinstance(exc, MigserveError) else ErrorCode.INSUFFICIENT_RESOURCES
            self.stats.failures += 1
            self.emit(
                InstanceFailed,
                instance_id=instance_id,
                model_id=model_id,
                node=reply.node,
                profile=profile,
                reason=str(exc),
                code=code,
                trace_id=reply.trace_id,
            )
            self._answer(reply, ok=False, code=code, reason=str(exc))
            return
        node, index = sim.config.node_of(gpu)
        inst = SimInstance(
            instance_id=instance_id,
            model=model_id,
            gpu=gpu,
            profile=prof.name,
            start=start,
            compute_slices=prof.compute_slices,
            memory_slices=prof.memory_slices,
            slots=slots_for(model, prof),
            perf=perf_for(model, prof),
            slo_s=model.slo_ms / 1000.0,
            created_at=sim.now,
            last=sim.now,
        )
        record = InstanceRecord(
            instance_id=instance_id,
            model_id=model_id,
            node=node,
            gpu_index=index,
            profile=prof.name,
            start=start,
            slice_uuid=f"MIG-sim-{rec.gi_id}",
            engine=model.spec.engine,
            state="starting",
            slots=inst.slots,
            plan_id=plan_id,
            trace_id=reply.trace_id,
            created=sim.abs_now,
            updated=sim.abs_now,
        )
        work = _Work(inst, rec, node, reply.trace_id, mig, record, reply)
        self._work[instance_id] = work
        sim.instances[instance_id] = inst
        self.stats.creates += 1
        self._update_node(node, reply.trace_id)
        if prewarmed:
            self._slice_made(work, 0.0)
            return
        self.stats.cold_starts += 1
        self.stats.reconfigurations += 1 if mig else 0
        create_s = sim.config.slice_create_s if mig else 0.0
        sim.at(sim.now + create_s, partial(self._slice_made, work, sim.config.engine_start_s))

    def _slice_made(self, work: _Work, engine_s: float) -> None:
        sim, inst, rec = self.sim, work.inst, work.record
        inst.status = "starting"
        sim.records[inst.instance_id] = rec
        self.emit(
            SliceCreated,
            node=work.node,
            gpu_index=rec.gpu_index,
            profile=rec.profile,
            start=rec.start,
            slice_uuid=rec.slice_uuid,
            instance_id=inst.instance_id,
            trace_id=work.trace_id,
        )
        self._instance_event(InstanceStarting, work)
        if engine_s <= 0:
            self._engine_ready(work)
        else:
            sim.at(sim.now + engine_s, partial(self._engine_ready, work))

    def _engine_ready(self, work: _Work) -> None:
        sim, inst = self.sim, work.inst
        inst.status = "ready"
        inst.ready_at = sim.now
        work.record = msgspec.structs.replace(work.record, state="ready", updated=sim.abs_now)
        sim.records[inst.instance_id] = work.record
        sim.instance_ready(inst)
        self._instance_event(InstanceReady, work, startup_s=sim.now - inst.created_at)
        self._answer(work.reply)
        for dup in work.duplicates:
            self._answer(dup, duplicate=True)
        work.duplicates.clear()
        if work.pending_retire is not None:
            reply, drain_s = work.pending_retire
            work.pending_retire = None
            self.retire(inst.instance_id, reply=reply, drain_timeout_s=drain_s)

    # Retire --------------------------------------------------------------------------
    def retire(
        self, instance_id: str, *, reply: Reply | None = None, drain_timeout_s: float = 30.0
    ) -> None:
        sim = self.sim
        reply = reply or Reply(instance_id=instance_id)
        work = self._work.get(instance_id)
        if work is None or work.inst.status in ("draining", "gone"):
            self._answer(reply, duplicate=True)
            return
        inst = work.inst
        if inst.status in ("creating", "starting"):
            work.pending_retire = (reply, drain_timeout_s)
            return
        work.reply = reply
        work.trace_id = reply.trace_id or work.trace_id
        inst.status = "draining"
        sim.instance_unready(inst)
        self.stats.retires += 1
        work.record = msgspec.structs.replace(work.record, state="draining", updated=sim.abs_now)
        sim.records[instance_id] = work.record
        self._instance_event(InstanceDraining, work)
        if inst.in_use == 0:
            self.drained(inst)
        else:
            sim.at(sim.now + drain_timeout_s, partial(self._drain_timeout, work, drain_timeout_s))

    def _drain_timeout(self, work: _Work, drain_s: float) -> None:
        inst = work.inst
        if inst.status == "draining" and inst.in_use:
            for req in inst.evict(self.sim.now, f"drain timeout after {drain_s:g} s"):
                self.sim.fail(req, req.failed)
                self.stats.drain_kills += 1
            self.drained(inst)

    def drained(self, inst: SimInstance) -> None:
        """The draining instance holds no request: stop it, destroy its slice."""
        if inst.status != "draining":
            return
        inst.status = "gone"
        work = self._work[inst.instance_id]
        destroy_s = self.sim.config.slice_destroy_s if work.mig else 0.0
        self.sim.at(self.sim.now + destroy_s, partial(self._destroyed, work))

    def _destroyed(self, work: _Work) -> None:
        sim, inst = self.sim, work.inst
        sim.cluster.remove(work.slice, sim.now)
        if work.mig:
            self.stats.reconfigurations += 1
        self._update_node(work.node, work.trace_id)
        self.emit(
            SliceDestroyed,
            node=work.node,
            gpu_index=work.record.gpu_index,
            profile=inst.profile,
            start=inst.start,
            instance_id=inst.instance_id,
            reason="retired",
            trace_id=work.trace_id,
        )
        self._instance_event(InstanceStopped, work, reason="retired")
        sim.records.pop(inst.instance_id, None)
        sim.instances.pop(inst.instance_id, None)
        self._answer(work.reply)

    def _update_node(self, node: str, trace_id: str) -> None:
        """Rewrite the node's entry in the nodes bucket and event it (``node.inventory``)."""
        state = self.sim.cluster.node_state(node, self.sim.abs_now)
        self.sim.nodes[node] = state
        self.emit(NodeInventory, node=state, trace_id=trace_id)
