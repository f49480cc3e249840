"""What the view says about slices and instances, as placement needs it.

Slices count as used when the node reports them, when an instance record
names them, or when a step of a plan in flight reserves them (every create
step that has not failed, done or not yet sent). When a plan retires an
instance and creates a slice at the same start of the same GPU (break before
make), the new slice's reservation replaces the old one's, so nobody else is
placed in the part of the new slice the old one does not cover.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import msgspec
from migserve_shared import mig
from migserve_shared.errors import NotSupportedError
from migserve_shared.messages import InstanceRecord, NodeState, Plan, PlanStep

from migserve_scaler.core.placement import BadProfileBoundError, Reservation, profile_rank
from migserve_scaler.core.view import ClusterView

#: instance states whose slice still exists
HOLDS_SLICE = frozenset({"starting", "ready", "draining"})

#: a profile's shape: (memory slices, compute slices), the same on every GPU model
Shape = tuple[int, int]

GpuKey = tuple[str, int]


def plans_in_flight(view: ClusterView) -> list[Plan]:
    return [e.plan for e in view.plans.values() if view.plan_in_flight(e.plan.model_id)]


def _replaced_slices(plans: Iterable[Plan]) -> set[tuple[str, int, int]]:
    """(node, GPU, start) of slices a plan retires and re-creates at the same start."""
    out: set[tuple[str, int, int]] = set()
    for plan in plans:
        retired = {(s.node, s.gpu_index, s.start) for s in plan.steps if s.op == "retire"}
        for s in plan.steps:
            where = (s.node, s.gpu_index, s.start)
            if s.op == "create" and s.status != "failed" and where in retired:
                out.add(where)
    return out


def reserved_slices(view: ClusterView) -> dict[GpuKey, list[Reservation]]:
    """Slices used by instances or reserved by plans in flight, by (node, GPU index)."""
    plans = plans_in_flight(view)
    replaced = _replaced_slices(plans)
    out: dict[GpuKey, list[Reservation]] = defaultdict(list)
    for plan in plans:
        for step in plan.steps:
            if step.op == "create" and step.status != "failed":
                out[step.node, step.gpu_index].append(
                    Reservation(step.node, step.gpu_index, step.profile, step.start)
                )
    for rec in view.instances.values():
        if rec.state in HOLDS_SLICE and (rec.node, rec.gpu_index, rec.start) not in replaced:
            out[rec.node, rec.gpu_index].append(
                Reservation(rec.node, rec.gpu_index, rec.profile, rec.start)
            )
    return dict(out)


def placement_nodes(view: ClusterView) -> list[NodeState]:
    """The nodes as placement should see them: slices a plan in flight replaces at
    the same start are left out (the plan's reservation stands for them)."""
    replaced = _replaced_slices(plans_in_flight(view))
    if not replaced:
        return list(view.nodes.values())
    out: list[NodeState] = []
    for node in view.nodes.values():
        if not any(r[0] == node.node for r in replaced):
            out.append(node)
            continue
        gpus = [
            msgspec.structs.replace(
                g,
                slices=[s for s in g.slices if (node.node, g.index, s.start) not in replaced],
            )
            for g in node.gpus
        ]
        out.append(msgspec.structs.replace(node, gpus=gpus))
    return out


def busy_instances(view: ClusterView) -> set[str]:
    """Instances a plan in flight creates, retires or moves: no other plan may pick them."""
    return {s.instance_id for plan in plans_in_flight(view) for s in plan.steps}


def gpu_model_of(view: ClusterView, node: str, gpu_index: int) -> mig.GpuModel | None:
    state = view.nodes.get(node)
    if state is None:
        return None
    for gpu in state.gpus:
        if gpu.index == gpu_index:
            try:
                return mig.gpu_model(gpu.model)
            except NotSupportedError:
                return None
    return None


def instance_gpu_model(view: ClusterView, rec: InstanceRecord) -> mig.GpuModel | None:
    return gpu_model_of(view, rec.node, rec.gpu_index)


def shape_of(view: ClusterView, rec: InstanceRecord) -> Shape | None:
    """The shape of an instance's slice (by its GPU's model; by name when that is unknown)."""
    model = instance_gpu_model(view, rec)
    if model is not None:
        try:
            p = model.profile(rec.profile)
        except NotSupportedError:
            return None
        return p.memory_slices, p.compute_slices
    try:
        return profile_rank(rec.profile)
    except BadProfileBoundError:
        return None


def step_model(plan: Plan, step: PlanStep) -> str:
    """The model whose instance a step creates or retires."""
    return step.model_id or plan.model_id
