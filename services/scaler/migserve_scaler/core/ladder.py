"""Profile steps: the next bigger or smaller slice for a model, within its bounds.

A step is one level of compute: from 1g to 2g, 3g, 4g, 7g and back (the
1g profile with two memory slices is no step up from 1g; it is only used when
the model needs its memory). At each level the step takes the profile with the
least memory that still holds the model. Bounds (``min_profile`` and
``max_profile``) compare shapes (memory slices, compute slices) as placement
does, so a bound named on one GPU model means the same shape on every other.
"""

from __future__ import annotations

from functools import cache

import msgspec
from migserve_shared import mig
from migserve_shared.messages import ModelSpec

from migserve_scaler.core.cluster import Shape
from migserve_scaler.core.placement import BadProfileBoundError, profile_rank

_LARGEST: Shape = (mig.MEMORY_SLICES, 99)


def bounds(spec: ModelSpec) -> tuple[Shape, Shape]:
    """(lowest, highest) shape the spec allows; BadProfileBoundError for an unknown name."""
    low = profile_rank(spec.min_profile) if spec.min_profile else (0, 0)
    high = profile_rank(spec.max_profile) if spec.max_profile else _LARGEST
    return low, high


def _levels(model: mig.GpuModel, spec: ModelSpec) -> dict[int, Shape]:
    """Compute slices -> the least-memory shape at that level that holds the model and
    respects its bounds."""
    low, high = bounds(spec)
    out: dict[int, Shape] = {}
    for p in model.by_size():  # smallest memory first
        shape = (p.memory_slices, p.compute_slices)
        if p.memory_mb < spec.memory_mb or not low <= shape <= high:
            continue
        out.setdefault(p.compute_slices, shape)
    return out


def steps_up(model: mig.GpuModel, spec: ModelSpec, current: Shape) -> list[Shape]:
    """Bigger shapes for the model on GPUs like ``model``, next step first."""
    levels = _levels(model, spec)
    return [levels[c] for c in sorted(levels) if c > current[1]]


def step_down(model: mig.GpuModel, spec: ModelSpec, current: Shape) -> Shape | None:
    """The next smaller shape that still holds the model, or None at the bottom."""
    levels = _levels(model, spec)
    lower = [c for c in levels if c < current[1]]
    return levels[max(lower)] if lower else None


@cache
def shape_name(shape: Shape) -> str:
    """A profile name whose shape (as ``profile_rank`` reads names) is ``shape``."""
    for model in mig.GPU_MODELS:
        for p in model.by_size():
            if (p.memory_slices, p.compute_slices) == shape and profile_rank(p.name) == shape:
                return p.name
    raise BadProfileBoundError(
        f"no MIG profile has {shape[0]} memory and {shape[1]} compute slices"
    )


def pinned(spec: ModelSpec, shape: Shape) -> ModelSpec:
    """``spec`` with both bounds at ``shape``: placement then considers that shape only."""
    name = shape_name(shape)
    return msgspec.structs.replace(spec, min_profile=name, max_profile=name)


def describe(shape: Shape) -> str:
    return f"{shape[1]}g ({shape[0]} memory slices)"
