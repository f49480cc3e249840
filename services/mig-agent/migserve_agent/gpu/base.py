"""The GPU backend Protocol, shaped like the NVML calls the agent makes.

Methods are synchronous because NVML calls block: the agent calls them through
``asyncio.to_thread`` and serializes slice changes per GPU itself. Errors use
NVML's semantics through migserve's exception tree (``migserve_shared.errors``):

* ``InsufficientResourcesError``: the slice does not fit at that placement;
* ``NotSupportedError``: MIG is off on the GPU, or the profile is unknown;
* ``NotFoundError``: no such GPU or GPU instance;
* ``InUseError``: the slice still has processes on it;
* ``NoPermissionError``: the caller may not change MIG slices.

A "slice" is one GPU instance holding one compute instance that spans it (what
migserve always creates); ``gi_id`` names it on its GPU and ``uuid``
("MIG-...") is what a process gets in CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuInfo:
    """One physical GPU (nvmlDeviceGetHandleByIndex and friends)."""

    index: int
    uuid: str
    #: the device name as NVML reports it, e.g. "NVIDIA A100-SXM4-40GB"
    name: str
    mig_enabled: bool
    memory_mb: int
    #: NVML's MIG mode in words, e.g. "current enabled, pending disabled" ("" if not known)
    mig_mode: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceInfo:
    """One GPU instance with its compute instance."""

    gpu_index: int
    gi_id: int
    ci_id: int
    #: NVML profile id (nvmlGpuInstanceProfileInfo_t.id) and its name
    profile_id: int
    profile: str
    #: first memory slice of the placement
    start: int
    #: the MIG device UUID, "MIG-..."
    uuid: str
    memory_mb: int
    sm_count: int


class OwnedSlice(msgspec.Struct, frozen=True, kw_only=True):
    """A slice migserve created, and the instance it was made for (see ownership.py)."""

    uuid: str
    gpu_index: int
    gpu_uuid: str
    gi_id: int
    profile: str
    start: int
    instance_id: str
    created: float = 0.0


class GpuBackend(Protocol):
    """What the agent needs from the GPUs of its node."""

    #: "simulated" or "nvml", reported in the node's inventory
    name: str

    def list_gpus(self) -> list[GpuInfo]:
        """Every GPU of the node, by index."""
        ...

    def list_slices(self, gpu_index: int) -> list[SliceInfo]:
        """The slices on one GPU, by start (NotFoundError for an unknown index)."""
        ...

    def create_slice(self, gpu_index: int, profile: str, start: int) -> SliceInfo:
        """Create a GI+CI of ``profile`` (name) at memory slice ``start``."""
        ...

    def destroy_slice(self, gpu_index: int, gi_id: int) -> None:
        """Destroy the slice's compute instance, then its GPU instance."""
        ...

    def slice_processes(self, gpu_index: int, gi_id: int) -> list[int]:
        """PIDs of the processes running on the slice."""
        ...

    def close(self) -> None:
        """Release the backend (nvmlShutdown)."""
        ...
