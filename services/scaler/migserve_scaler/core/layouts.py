"""Per-layout computations for placement, remembered: layouts repeat across GPUs and decisions.

A layout is a GPU's slices in use as a frozenset of (NVML profile id, start)
pairs. A thousand GPUs show a few hundred distinct layouts, and the next
decision sees nearly the same ones, so each function here is a pure function
of (GPU model name, layout, ...) memoized with a bounded ``lru_cache``. Every
MIG rule still comes from ``migserve_shared.mig`` (``layout_free_starts`` is
``mig.free_starts``); this module only remembers the answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from migserve_shared import mig

#: a GPU's slices in use as (profile id, start) pairs: the key of the caches below
Layout = frozenset[tuple[int, int]]


@lru_cache(maxsize=64)
def _by_size(model_name: str) -> tuple[mig.Profile, ...]:
    return mig.gpu_model(model_name).by_size()


@lru_cache(maxsize=64)
def _by_id(model_name: str) -> Mapping[int, mig.Profile]:
    return MappingProxyType({p.id: p for p in mig.gpu_model(model_name).profiles})


@lru_cache(maxsize=64)
def profile_ids(model_name: str) -> Mapping[str, int]:
    """Profile name -> NVML profile id on a GPU model."""
    return MappingProxyType({p.name: p.id for p in mig.gpu_model(model_name).profiles})


def layout_slices(layout: Layout) -> tuple[mig.Slice, ...]:
    return tuple(mig.Slice(pid, start) for pid, start in layout)


@lru_cache(maxsize=1 << 16)
def layout_free_starts(model_name: str, layout: Layout, profile_id: int) -> tuple[int, ...]:
    """``mig.free_starts`` of a profile (by id) on a layout, remembered per layout."""
    model = mig.gpu_model(model_name)
    return tuple(mig.free_starts(model, layout_slices(layout), model.profile(profile_id)))


@lru_cache(maxsize=1 << 16)
def layout_rank(model_name: str, layout: Layout) -> tuple[int, int, int, int]:
    """``mig.capacity_score`` of a layout and the (profile, start) options it leaves open.

    Both come from the remembered ``layout_free_starts``; the score is
    ``mig.capacity_score``'s formula (tests check they agree on every layout).
    """
    largest = options = 0
    for p in _by_size(model_name):
        n = len(layout_free_starts(model_name, layout, p.id))
        options += n
        if n and p.compute_slices > largest:
            largest = p.compute_slices
    compute = mask = 0
    profiles = _by_id(model_name)
    for pid, start in layout:
        p = profiles[pid]
        compute += p.compute_slices
        mask |= p.mask(start)
    return largest, mig.COMPUTE_SLICES - compute, mig.MEMORY_SLICES - mask.bit_count(), options


@lru_cache(maxsize=1 << 16)
def best_start(
    model_name: str, layout: Layout, profile_id: int
) -> tuple[int, int, int, int, int] | None:
    """(-score..., -options, start) of the best start of a profile on a layout, if any."""
    best: tuple[int, int, int, int, int] | None = None
    for start in layout_free_starts(model_name, layout, profile_id):
        a, b, c, d = layout_rank(model_name, layout | {(profile_id, start)})
        key = (-a, -b, -c, -d, start)
        if best is None or key < best:
            best = key
    return best


@lru_cache(maxsize=1 << 16)
def moves_needed(
    model_name: str, layout: Layout, movable: frozenset[int], pid: int, start: int
) -> int | None:
    """Moves of the GPU's own slices that freeing ``start`` for ``pid`` takes at least,
    or None when no moves can free it (a slice that cannot move is in the way)."""
    if start in layout_free_starts(model_name, layout, pid):
        return 0
    model = mig.gpu_model(model_name)
    region = model.profile(pid).mask(start)
    blockers = frozenset(x for x in layout if model.profile(x[0]).mask(x[1]) & region)
    if any(st not in movable for _, st in blockers):
        return None
    fixed = frozenset(x for x in layout if x[1] not in movable)
    if start not in layout_free_starts(model_name, fixed, pid):
        return None
    rest = layout - blockers
    return len(blockers) + (0 if start in layout_free_starts(model_name, rest, pid) else 1)


@lru_cache(maxsize=1 << 16)
def opens_room(
    model_name: str, layout: Layout, movable: frozenset[int], wanted: frozenset[int]
) -> bool:
    """Whether removing one movable slice lets a profile in ``wanted`` fit where none fits now."""
    for pid in wanted:
        if layout_free_starts(model_name, layout, pid):
            continue
        for start in movable:
            rest = frozenset(x for x in layout if x[1] != start)
            if layout_free_starts(model_name, rest, pid):
                return True
    return False


def preference(model_name: str, layout: Layout, pid: int, start: int) -> tuple[int, ...]:
    """Where a moved slice goes best: the highest rank of its new GPU's layout (lowest first)."""
    return tuple(-v for v in layout_rank(model_name, layout | {(pid, start)}))


@lru_cache(maxsize=1 << 16)
def rooms_on(model_name: str, layout: Layout, pid: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """(preference, start) of every free place for a profile on a layout."""
    return tuple(
        (preference(model_name, layout, pid, st), st)
        for st in layout_free_starts(model_name, layout, pid)
    )


def profile_by_id(model_name: str, pid: int) -> mig.Profile:
    return _by_id(model_name)[pid]


@lru_cache(maxsize=1 << 14)
def goal_options(
    model_name: str, layout: Layout, movable: frozenset[int], pids: tuple[int, ...]
) -> tuple[tuple[tuple[int, int], int, int, int], ...]:
    """((memory MB, compute slices), moves needed at least, profile id, start) of every
    place for one of the profiles ``pids`` that moves of the GPU's own slices can free."""
    profiles = _by_id(model_name)
    out = []
    for pid in pids:
        p = profiles[pid]
        for start in p.starts:
            least = moves_needed(model_name, layout, movable, pid, start)
            if least is not None:
                out.append(((p.memory_mb, p.compute_slices), least, pid, start))
    return tuple(out)
