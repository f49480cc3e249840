"""MIG placement rules: the one implementation, used by the simulated GPU and the scaler.

A GPU with 7 compute slices has 8 memory slices. A slice (GPU instance) of a
profile occupies ``memory_slices`` contiguous memory slices starting at one of
the profile's allowed starts. A layout on one GPU is valid when:

* every slice starts at an allowed start of its profile (1-memory-slice
  profiles never use memory slice 7; 4g only at 0; 3g at 0 or 4; ...);
* no two slices share a memory slice;
* no profile exceeds its maximum count (the ``+me`` profile at most once);
* the compute slices of all slices add up to at most 7 (3g+3g leaves one idle;
  4g at 0 plus 3g at 4 is valid).

Profile ids are NVML profile ids (``nvmlGpuInstanceProfileInfo_t.id``), not the
``NVML_GPU_INSTANCE_PROFILE_*`` indices. Memory sizes and SM counts here are
nominal defaults for the simulated GPU; the NVML backend reads the real ones.
Sources: NVIDIA MIG User Guide ("Supported MIG Profiles", "Creating GPU
Instances"), nvml.h, NVIDIA/mig-parted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from migserve_shared.errors import InsufficientResourcesError, NotSupportedError

MEMORY_SLICES = 8
COMPUTE_SLICES = 7


@dataclass(frozen=True, slots=True)
class Profile:
    """One GPU instance profile of one GPU model."""

    id: int
    name: str
    compute_slices: int
    memory_slices: int
    max_count: int
    starts: tuple[int, ...]
    memory_mb: int
    sm_count: int
    #: NVML_GPU_INSTANCE_PROFILE_* index (what nvmlDeviceGetGpuInstanceProfileInfo takes)
    nvml_index: int

    def mask(self, start: int) -> int:
        """Bit mask of the memory slices a slice of this profile at ``start`` uses."""
        return ((1 << self.memory_slices) - 1) << start


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A MIG-capable GPU model and its profiles."""

    name: str
    #: substrings of NVML's device name that identify this model
    nvml_names: tuple[str, ...]
    memory_mb: int
    profiles: tuple[Profile, ...]

    def profile(self, key: int | str) -> Profile:
        """The profile with NVML id or name ``key``; NotSupportedError if unknown."""
        for p in self.profiles:
            if key in (p.id, p.name):
                return p
        raise NotSupportedError(f"profile {key!r} is not supported on {self.name}")

    def by_size(self) -> tuple[Profile, ...]:
        """Profiles without media extensions, smallest memory first, then compute."""
        plain = [p for p in self.profiles if not p.name.endswith("+me")]
        return tuple(sorted(plain, key=lambda p: (p.memory_mb, p.compute_slices, p.id)))


@dataclass(frozen=True, slots=True)
class Slice:
    """A placed GPU instance: a profile id at a memory-slice start."""

    profile_id: int
    start: int


# NVML_GPU_INSTANCE_PROFILE_* indices
_IDX_1, _IDX_2, _IDX_3, _IDX_4, _IDX_7 = 0, 1, 2, 3, 4
_IDX_1_ME, _IDX_1_2MEM = 7, 9


def _profiles(
    sizes: dict[str, int], mem_mb: dict[str, int], sms: tuple[int, ...]
) -> tuple[Profile, ...]:
    """Build the 7 standard profiles of a GPU model from its names and sizes."""
    sm1, sm2, sm3, sm4, sm7 = sms
    n1, n1me, n1x2, n2, n3, n4, n7 = sizes
    return (
        Profile(19, n1, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6), mem_mb[n1], sm1, _IDX_1),
        Profile(20, n1me, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), mem_mb[n1], sm1, _IDX_1_ME),
        Profile(15, n1x2, 1, 2, 4, (0, 2, 4, 6), mem_mb[n1x2], sm1, _IDX_1_2MEM),
        Profile(14, n2, 2, 2, 3, (0, 2, 4), mem_mb[n2], sm2, _IDX_2),
        Profile(9, n3, 3, 4, 2, (0, 4), mem_mb[n3], sm3, _IDX_3),
        Profile(5, n4, 4, 4, 1, (0,), mem_mb[n4], sm4, _IDX_4),
        Profile(0, n7, 7, 8, 1, (0,), mem_mb[n7], sm7, _IDX_7),
    )


def _model(  # noqa: PLR0917
    name: str,
    nvml_names: tuple[str, ...],
    total_mb: int,
    names: str,
    mb: Sequence[int],
    sms: tuple[int, ...],
) -> GpuModel:
    keys = names.split()
    n1, _, n1x2, n2, n3, n4, n7 = keys
    m1, m2, m4, m8 = mb
    mem = {n1: m1, n1x2: m2, n2: m2, n3: m4, n4: m4, n7: m8}
    return GpuModel(name, nvml_names, total_mb, _profiles(dict.fromkeys(keys, 0), mem, sms))


GPU_MODELS: tuple[GpuModel, ...] = (
    _model(
        "A100-SXM4-40GB",
        ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
        40960,
        "1g.5gb 1g.5gb+me 1g.10gb 2g.10gb 3g.20gb 4g.20gb 7g.40gb",
        (4864, 9984, 20096, 40448),
        (14, 28, 42, 56, 98),
    ),
    _model(
        "A100-80GB",
        ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
        81920,
        "1g.10gb 1g.10gb+me 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb",
        (9728, 19968, 40192, 80640),
        (14, 28, 42, 56, 98),
    ),
    _model(
        "H100-80GB",
        ("H100 80GB", "H100-SXM5-80GB", "H100 PCIe", "H100-80GB"),
        81920,
        "1g.10gb 1g.10gb+me 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb",
        (9984, 20096, 40448, 81152),
        (16, 32, 60, 64, 132),
    ),
    _model(
        "H200-141GB",
        ("H200", "H200-141GB", "H200 NVL"),
        144384,
        "1g.18gb 1g.18gb+me 1g.35gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb",
        (16384, 33280, 71424, 142336),
        (16, 32, 60, 64, 132),
    ),
)


def _names_alias(name: str, alias: str) -> bool:
    """Whether ``alias`` occurs in ``name`` as whole tokens ("NVIDIA GH200" is no H200)."""
    pattern = rf"(?<![a-z0-9]){re.escape(alias.lower())}(?![a-z0-9])"
    return re.search(pattern, name.lower()) is not None


@cache
def gpu_model(name: str) -> GpuModel:
    """The GPU model whose name, or one of whose NVML names, matches ``name``."""
    for model in GPU_MODELS:
        if name == model.name:
            return model
    for model in GPU_MODELS:
        if any(_names_alias(name, alias) for alias in model.nvml_names):
            return model
    known = ", ".join(m.name for m in GPU_MODELS)
    raise NotSupportedError(f"GPU model {name!r} is not MIG-capable or unknown (known: {known})")


def _state(model: GpuModel, slices: Iterable[Slice]) -> tuple[int, int, dict[int, int]]:
    """(occupied memory mask, compute slices used, count per profile id)."""
    mask = 0
    compute = 0
    counts: dict[int, int] = {}
    for s in slices:
        p = model.profile(s.profile_id)
        mask |= p.mask(s.start)
        compute += p.compute_slices
        counts[p.id] = counts.get(p.id, 0) + 1
    return mask, compute, counts


def placement_error(
    model: GpuModel, slices: Iterable[Slice], profile: Profile, start: int
) -> str | None:
    """Why ``profile`` at ``start`` cannot join ``slices``, or None when it can."""
    if start not in profile.starts:
        return f"{profile.name} cannot start at memory slice {start} (allowed: {profile.starts})"
    mask, compute, counts = _state(model, slices)
    if mask & profile.mask(start):
        return f"{profile.name} at {start} overlaps memory slices already in use"
    if compute + profile.compute_slices > COMPUTE_SLICES:
        return (
            f"{profile.name} needs {profile.compute_slices} compute slices, "
            f"{COMPUTE_SLICES - compute} are free"
        )
    if counts.get(profile.id, 0) >= profile.max_count:
        return f"{profile.name} is already at its maximum count {profile.max_count}"
    return None


def check_place(model: GpuModel, slices: Iterable[Slice], profile: Profile, start: int) -> None:
    """Raise InsufficientResourcesError (NVML semantics) unless the slice fits."""
    reason = placement_error(model, slices, profile, start)
    if reason is not None:
        raise InsufficientResourcesError(f"{model.name}: {reason}")


def validate_layout(model: GpuModel, slices: Sequence[Slice]) -> None:
    """Raise InsufficientResourcesError if ``slices`` is not a valid layout."""
    placed: list[Slice] = []
    for s in slices:
        check_place(model, placed, model.profile(s.profile_id), s.start)
        placed.append(s)


def free_starts(model: GpuModel, slices: Sequence[Slice], profile: Profile) -> list[int]:
    """Every start at which ``profile`` can be placed now."""
    mask, compute, counts = _state(model, slices)
    if compute + profile.compute_slices > COMPUTE_SLICES:
        return []
    if counts.get(profile.id, 0) >= profile.max_count:
        return []
    return [st for st in profile.starts if not mask & profile.mask(st)]


def placeable_profiles(model: GpuModel, slices: Sequence[Slice]) -> list[Profile]:
    """Profiles (without +me) of which at least one more slice fits now."""
    return [p for p in model.by_size() if free_starts(model, slices, p)]


def capacity_score(model: GpuModel, slices: Sequence[Slice]) -> tuple[int, int, int]:
    """How much a layout still offers, for fragmentation-aware placement.

    Higher is better: (compute slices of the largest placeable profile, free
    compute slices, free memory slices). Placing a new slice where this score
    stays highest keeps the largest profiles placeable.
    """
    mask, compute, _ = _state(model, slices)
    largest = max((p.compute_slices for p in placeable_profiles(model, slices)), default=0)
    return largest, COMPUTE_SLICES - compute, MEMORY_SLICES - mask.bit_count()


_CELL = 8


def render_bar(
    model: GpuModel, slices: Sequence[Slice], labels: dict[int, str] | None = None
) -> str:
    """Draw the 8 memory slices as a bar, four characters per memory slice.

    ``[3g.20gb        |2g     |·  |·  ]`` shows a 3g slice at 0, a 2g slice at 4
    and two free memory slices. ``labels`` maps a slice's start to its label
    (default: the profile name).
    """
    cells: list[str] = []
    by_start = {s.start: s for s in slices}
    pos = 0
    while pos < MEMORY_SLICES:
        s = by_start.get(pos)
        if s is None:
            cells.append("·".ljust(_CELL - 1))
            pos += 1
            continue
        p = model.profile(s.profile_id)
        width = p.memory_slices * _CELL - 1
        label = (labels or {}).get(s.start, p.name)
        cells.append(label[:width].ljust(width))
        pos += p.memory_slices
    return "[" + "|".join(cells) + "]"
