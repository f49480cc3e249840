"""Where a new slice for a model goes: the smallest profile that holds it,
packed onto a GPU already in use, where that GPU keeps its largest profiles
placeable.

Every MIG rule comes from ``migserve_shared.mig``; this module only enumerates
candidates and ranks them:

1. the smallest profile (by memory, then compute) whose memory holds
   ``ModelSpec.memory_mb``, within the spec's ``min_profile``/``max_profile``;
2. a GPU that already holds slices (in use or reserved) before an empty one
   (bin packing: models share GPUs, and empty GPUs stay whole for 7g slices
   and can be given back);
3. among its placements, the highest ``mig.capacity_score`` of the layout
   after placing it (the largest profile still placeable, then free compute,
   then free memory);
4. then the placement leaving the most (profile, start) options open;
5. then the GPU with the fewest slices in use, then node name, GPU index and
   start, so the choice is deterministic.

Slices count as used when the node reports them, when an instance record
names them, or when a plan in flight reserved them.

Answers per GPU layout are remembered (``core/layouts.py``): a thousand GPUs
show a few hundred layouts, and the next decision sees nearly the same ones.
The choice is the one evaluating every rule afresh would make
(bench/scaler_decision.py compares the two on random clusters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from migserve_shared import mig
from migserve_shared.errors import NotSupportedError
from migserve_shared.messages import GpuState, ModelSpec, NodeState

from migserve_scaler.core.layouts import Layout, best_start, profile_ids

_REASON_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Reservation:
    """A slice that is in use or about to be: (node, GPU, profile name, start)."""

    node: str
    gpu_index: int
    profile: str
    start: int


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    gpu_index: int
    gpu_model: str
    profile: str
    profile_memory_mb: int
    start: int
    score: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class NoCapacity:
    """No GPU can take a slice for the model; ``reason`` says which GPUs and why."""

    reason: str


class BadProfileBoundError(ValueError):
    """A model's ``min_profile``/``max_profile`` names no known MIG profile."""


def profile_rank(name: str) -> tuple[int, int]:
    """(memory slices, compute slices) of a profile name on any known GPU model.

    Profile names differ between GPU models (1g.5gb on A100-40GB is 1g.10gb
    on H100); the rank compares profiles across them by shape.
    """
    for model in mig.GPU_MODELS:
        for p in model.profiles:
            if p.name == name:
                return p.memory_slices, p.compute_slices
    raise BadProfileBoundError(f"profile {name!r} is not a MIG profile of any known GPU model")


def candidate_profiles(model: mig.GpuModel, spec: ModelSpec) -> list[mig.Profile]:
    """Profiles of ``model`` that hold ``spec`` and respect its bounds, smallest first."""
    low = profile_rank(spec.min_profile) if spec.min_profile else (0, 0)
    high = profile_rank(spec.max_profile) if spec.max_profile else (mig.MEMORY_SLICES, 99)
    return [
        p
        for p in model.by_size()
        if p.memory_mb >= spec.memory_mb and low <= (p.memory_slices, p.compute_slices) <= high
    ]


def used_slices(
    model: mig.GpuModel, gpu: GpuState, reserved: Iterable[Reservation]
) -> list[mig.Slice]:
    """The GPU's reported slices plus reservations at starts not already reported."""
    slices = [mig.Slice(s.profile_id, s.start) for s in gpu.slices]
    taken = {s.start for s in slices}
    for r in reserved:
        if r.start in taken:
            continue
        try:
            profile = model.profile(r.profile)
        except NotSupportedError:
            continue
        slices.append(mig.Slice(profile.id, r.start))
        taken.add(r.start)
    return slices


def gpu_layout(
    model: mig.GpuModel, gpu: GpuState, reserved: Iterable[Reservation]
) -> tuple[Layout, int]:
    """``used_slices`` as a layout key, and how many slices ``used_slices`` lists."""
    items = [(s.profile_id, s.start) for s in gpu.slices]
    taken: set[int] | None = None
    for r in reserved:
        if taken is None:
            taken = {start for _, start in items}
        if r.start in taken:
            continue
        pid = profile_ids(model.name).get(r.profile)
        if pid is None:
            continue
        items.append((pid, r.start))
        taken.add(r.start)
    return frozenset(items), len(items)


@dataclass(frozen=True, slots=True)
class _Best:
    key: tuple[object, ...]
    node: str
    gpu_index: int
    model: mig.GpuModel
    profile: mig.Profile
    found: tuple[int, int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.profile.memory_mb, self.profile.compute_slices


def _gpu_model(gpu: GpuState) -> mig.GpuModel | str:
    if not gpu.mig_enabled:
        return "MIG is disabled"
    try:
        return mig.gpu_model(gpu.model)
    except NotSupportedError as exc:
        return str(exc)


def choose_placement(
    spec: ModelSpec,
    nodes: Iterable[NodeState],
    reserved: Mapping[tuple[str, int], Sequence[Reservation]],
) -> Placement | NoCapacity:
    """The best placement for a new slice of ``spec``, or why there is none.

    ``reserved`` maps (node, GPU index) to the slices in use or reserved
    there beyond what the node reports. Raises ``BadProfileBoundError`` when
    the spec's bounds name an unknown profile.
    """
    best: _Best | None = None
    failed: list[str | _Full] = []
    candidates: dict[str, list[mig.Profile]] = {}
    for node in sorted(nodes, key=lambda n: n.node):
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            model = _gpu_model(gpu)
            if isinstance(model, str):
                failed.append(f"{node.node}/gpu{gpu.index}: {model}")
                continue
            profiles = candidates.get(model.name)
            if profiles is None:
                profiles = candidates[model.name] = candidate_profiles(model, spec)
            if not profiles:
                failed.append(
                    f"{node.node}/gpu{gpu.index} ({model.name}): no profile within the model's "
                    f"bounds holds {spec.memory_mb} MB"
                )
                continue
            here = reserved.get((node.node, gpu.index), ())
            layout, count = gpu_layout(model, gpu, here)
            # candidates are smallest first, and size ranks first: the first that fits wins here
            for p in profiles:
                if best is not None and (p.memory_mb, p.compute_slices) > best.size:
                    break  # a larger profile than the best so far cannot win: skip its ranking
                found = best_start(model.name, layout, p.id)
                if found is not None:
                    empty = 0 if count else 1  # GPUs in use first: consolidate
                    key = (
                        p.memory_mb,
                        p.compute_slices,
                        empty,
                        *found[:4],
                        count,
                        node.node,
                        gpu.index,
                    )
                    if best is None or (*key, found[4]) < best.key:
                        best = _Best((*key, found[4]), node.node, gpu.index, model, p, found)
                    break
            else:
                if best is not None:
                    continue
                failed.append(_Full(f"{node.node}/gpu{gpu.index}", model, gpu, here, profiles))
    if best is not None:
        p, (a, b, c, _, start) = best.profile, best.found
        return Placement(
            best.node, best.gpu_index, best.model.name, p.name, p.memory_mb, start, (-a, -b, -c)
        )
    return NoCapacity(_no_capacity_reason(spec, failed))


@dataclass(frozen=True, slots=True)
class _Full:
    """A GPU on which no candidate profile fits; the reason is written only when shown."""

    where: str
    model: mig.GpuModel
    gpu: GpuState
    reserved: Sequence[Reservation]
    profiles: Sequence[mig.Profile]

    def reason(self) -> str:
        slices = used_slices(self.model, self.gpu, self.reserved)
        return _why_not(self.where, self.model, slices, self.profiles)


def _why_not(
    where: str, model: mig.GpuModel, slices: Sequence[mig.Slice], profiles: Sequence[mig.Profile]
) -> str:
    """The GPU's layout, what is free, and why the smallest candidate profile does not fit."""
    _, free_compute, free_memory = mig.capacity_score(model, slices)
    smallest = profiles[0]
    errors = list(
        dict.fromkeys(
            err
            for start in smallest.starts
            if (err := mig.placement_error(model, slices, smallest, start)) is not None
        )
    )
    shown = "; ".join(errors[:2]) + (" ..." if len(errors) > 2 else "")
    return (
        f"{where} {mig.render_bar(model, slices)} ({free_compute} of {mig.COMPUTE_SLICES} "
        f"compute slices free, {free_memory} of {mig.MEMORY_SLICES} memory slices free): {shown}"
    )


def _no_capacity_reason(spec: ModelSpec, failed: Sequence[str | _Full]) -> str:
    bounds = ""
    if spec.min_profile or spec.max_profile:
        bounds = f" between {spec.min_profile or 'any'} and {spec.max_profile or 'any'}"
    head = f"no GPU can place a slice of at least {spec.memory_mb} MB{bounds}"
    if not failed:
        return f"{head}: no node has reported any GPU"
    text = f"{head}: "
    for i, item in enumerate(failed):
        # a thousand full GPUs need only as many reasons as fit in the limit
        if len(text) > _REASON_LIMIT:
            break
        reason = item if isinstance(item, str) else item.reason()
        text += ("; " if i else "") + reason
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."
