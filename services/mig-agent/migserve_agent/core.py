"""The agent's pure decisions: the node's inventory and what to correct after a restart.

No I/O here: these functions take what the adapters observed and return what
to publish or do, so they are tested with plain tables.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import msgspec
from migserve_shared import mig
from migserve_shared.errors import MigserveError
from migserve_shared.messages import (
    EngineKind,
    GpuState,
    InstanceRecord,
    NodeState,
    SliceState,
)

from migserve_agent.gpu.base import GpuInfo, OwnedSlice, SliceInfo


def gpu_model_name(gpu: GpuInfo) -> str:
    """The ``mig`` model name of a GPU, or its NVML name if it is not a known MIG GPU."""
    try:
        return mig.gpu_model(gpu.name).name
    except MigserveError:
        return gpu.name


def build_node_state(
    *,
    node: str,
    agent_id: str,
    gpu_backend: str,
    runtime: str,
    engines: Sequence[EngineKind],
    gpus: Sequence[tuple[GpuInfo, Sequence[SliceInfo]]],
    owned: Mapping[str, OwnedSlice],
    now: float,
) -> NodeState:
    """The node's state for the nodes bucket; slices not in ``owned`` are not ours."""
    states = []
    for gpu, slices in gpus:
        states.append(
            GpuState(
                index=gpu.index,
                uuid=gpu.uuid,
                model=gpu_model_name(gpu),
                mig_enabled=gpu.mig_enabled,
                memory_mb=gpu.memory_mb,
                slices=[_slice_state(s, owned.get(s.uuid)) for s in slices],
            )
        )
    return NodeState(
        node=node,
        gpus=states,
        gpu_backend=gpu_backend,
        runtime=runtime,
        engines=list(engines),
        agent_id=agent_id,
        updated=now,
    )


def _slice_state(s: SliceInfo, owner: OwnedSlice | None) -> SliceState:
    return SliceState(
        gi_id=s.gi_id,
        profile_id=s.profile_id,
        profile=s.profile,
        start=s.start,
        uuid=s.uuid,
        instance_id=owner.instance_id if owner else None,
        ours=owner is not None,
        memory_mb=s.memory_mb,
        sm_count=s.sm_count,
    )


def same_inventory(a: NodeState | None, b: NodeState) -> bool:
    """Whether two node states differ only in their timestamp."""
    return a is not None and msgspec.structs.replace(a, updated=0.0) == msgspec.structs.replace(
        b, updated=0.0
    )


@dataclass(frozen=True, slots=True)
class Corrections:
    """What the agent changes at start-up so its node matches its records."""

    #: records whose processes run and whose slice exists: keep serving
    adopt: tuple[InstanceRecord, ...] = ()
    #: records that cannot be adopted, with the reason: event failed, remove the record
    fail: tuple[tuple[InstanceRecord, str], ...] = ()
    #: instances whose processes the runtime must stop (never adopted)
    stop_processes: tuple[str, ...] = ()
    #: our slices no adopted instance uses, with the reason: destroy them
    destroy: tuple[tuple[OwnedSlice, str], ...] = ()
    #: ownership entries whose slice no longer exists: forget them
    forget: tuple[OwnedSlice, ...] = ()
    #: adopted instances whose slice is missing from the ownership file: record it
    reown: tuple[tuple[InstanceRecord, SliceInfo], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.fail or self.stop_processes or self.destroy or self.forget or self.reown)


def plan_reconcile(
    *,
    records: Sequence[InstanceRecord],
    running: Collection[str],
    slices: Sequence[SliceInfo],
    owned: Sequence[OwnedSlice],
    runtime_known: Collection[str],
) -> Corrections:
    """Decide the corrections from the node's records and what actually runs.

    ``records`` are this node's instance records from KV, ``running`` the ids
    whose engine and bridge the runtime found alive, ``slices`` every slice on
    the GPUs, ``owned`` the slices migserve made and ``runtime_known`` every
    instance the runtime has processes recorded for.
    """
    by_uuid = {s.uuid: s for s in slices}
    owned_uuids = {o.uuid for o in owned}
    adopt: list[InstanceRecord] = []
    fail: list[tuple[InstanceRecord, str]] = []
    for rec in records:
        reason = _not_adoptable(rec, running, by_uuid)
        if reason is None:
            adopt.append(rec)
        else:
            fail.append((rec, reason))
    adopted = {r.instance_id for r in adopt}
    failed = {r.instance_id for r, _ in fail}
    destroy: list[tuple[OwnedSlice, str]] = []
    forget: list[OwnedSlice] = []
    for o in owned:
        if o.uuid not in by_uuid:
            if _bare_instance(o, slices) is not None:
                why = "its teardown was interrupted (GPU instance left without a compute instance)"
                destroy.append((o, f"{why} (made for {o.instance_id})"))
            else:
                forget.append(o)
        elif o.instance_id not in adopted:
            why = "its instance failed" if o.instance_id in failed else "no instance uses it"
            destroy.append((o, f"{why} (made for {o.instance_id})"))
    return Corrections(
        adopt=tuple(adopt),
        fail=tuple(fail),
        stop_processes=tuple(sorted(i for i in runtime_known if i not in adopted)),
        destroy=tuple(destroy),
        forget=tuple(forget),
        reown=tuple((r, by_uuid[r.slice_uuid]) for r in adopt if r.slice_uuid not in owned_uuids),
    )


def _bare_instance(owned: OwnedSlice, slices: Sequence[SliceInfo]) -> SliceInfo | None:
    """The GPU instance ``owned`` was made as, now without a compute instance.

    A slice has a MIG UUID only while its compute instance exists; an agent
    that dies between destroying the compute instance and the GPU instance
    leaves a GPU instance without one. It is still ours when GPU, GPU instance
    id, profile and start all match the record.
    """
    return next(
        (
            s
            for s in slices
            if not s.uuid
            and (s.gpu_index, s.gi_id, s.profile, s.start)
            == (owned.gpu_index, owned.gi_id, owned.profile, owned.start)
        ),
        None,
    )


def _not_adoptable(
    rec: InstanceRecord, running: Collection[str], slices: Mapping[str, SliceInfo]
) -> str | None:
    if rec.state == "starting":
        return "the agent restarted while the instance was starting"
    if rec.state in ("stopped", "failed"):
        return f"record left over in state {rec.state}"
    if not rec.slice_uuid or rec.slice_uuid not in slices:
        return f"its slice {rec.slice_uuid or '(none)'} no longer exists"
    if rec.instance_id not in running:
        return "its engine or bridge is not running after the agent restarted"
    return None
