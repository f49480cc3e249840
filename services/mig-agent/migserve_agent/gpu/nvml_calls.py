"""NVML calls with migserve's errors: the low-level half of the NVML backend.

``NvmlCalls`` takes the pynvml module object (it never imports pynvml: only
``gpu/nvml.py`` does) and wraps the read calls the backend and ``migserve gpu
inspect`` share. pynvml declares no argtypes, so out-counts are ``c_uint``
passed with ``byref`` and arrays are of pynvml's own ctypes types. Every NVML
error becomes one of migserve's (``migserve_shared.errors``) naming what was
done to which GPU, chained with ``from``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migserve_shared import mig
from migserve_shared.errors import (
    InsufficientResourcesError,
    InUseError,
    MigError,
    MigserveError,
    NoPermissionError,
    NotFoundError,
    NotSupportedError,
)

from migserve_agent.gpu.mig_mode import MigMode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device (a compute instance) found by walking a GPU's MIG device handles."""

    index: int
    gi_id: int
    ci_id: int
    uuid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileReport:
    """One GPU instance profile as NVML reports it (for ``migserve gpu inspect``)."""

    #: the NVML_GPU_INSTANCE_PROFILE_* value and its constant's name
    index: int
    index_name: str
    id: int
    #: migserve's name (``migserve_shared.mig``) if the profile is known, else NVML's
    name: str
    nvml_name: str
    compute_slices: int
    memory_slices: int | None
    max_count: int
    memory_mb: int
    sm_count: int
    #: allowed starts; None when NVML refused to say (it needs root)
    starts: list[int] | None
    #: how many more fit now; None when NVML refused to say
    remaining: int | None


@dataclass(frozen=True, slots=True)
class GpuInstance:
    """One GPU instance: its id, first memory slice, and its (short-lived) handle."""

    gi_id: int
    start: int
    handle: Any


class NvmlCalls:
    """Read calls over one pynvml module object, errors translated."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        self._errors: tuple[tuple[type[BaseException], type[MigError]], ...] = (
            (nv.NVMLError_InsufficientResources, InsufficientResourcesError),
            (nv.NVMLError_InUse, InUseError),
            (nv.NVMLError_NotFound, NotFoundError),
            (nv.NVMLError_NotSupported, NotSupportedError),
            (nv.NVMLError_NoPermission, NoPermissionError),
        )
        #: compute slices of a GPU instance -> the compute instance profile spanning it
        self._ci_profiles = {
            1: nv.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
            2: nv.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
            3: nv.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
            4: nv.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
            6: nv.NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE,
            7: nv.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE,
            8: nv.NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE,
        }

    def call(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with NVML errors translated; ``doing`` says what, to which GPU."""
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            raise self.translate(exc, doing) from exc

    def translate(self, exc: Exception, doing: str) -> MigError:
        message = f"{doing}: {exc} (NVML error {getattr(exc, 'value', '?')})"
        for nvml_error, ours in self._errors:
            if isinstance(exc, nvml_error):
                return ours(message)
        return MigError(message)

    def versioned(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A versioned profile-info call, falling back to version 1 on older drivers."""
        try:
            return fn(*args)
        except self.nv.NVMLError_FunctionNotFound:
            return fn(*args, 1)

    def mig_mode(self, handle: Any, gpu_index: int) -> MigMode:
        nv = self.nv
        try:
            current, pending = nv.nvmlDeviceGetMigMode(handle)
        except nv.NVMLError_NotSupported:
            return MigMode(supported=False)
        except nv.NVMLError as exc:
            raise self.translate(exc, f"reading GPU {gpu_index}'s MIG mode") from exc
        on = nv.NVML_DEVICE_MIG_ENABLE
        return MigMode(supported=True, current=current == on, pending=pending == on)

    def profile_info(self, handle: Any, index: int, doing: str) -> Any:
        """Profile info for an NVML_GPU_INSTANCE_PROFILE_* index (its ``.id`` is the id)."""
        fn = self.nv.nvmlDeviceGetGpuInstanceProfileInfo
        return self.call(doing, self.versioned, fn, handle, index)

    def profile_infos(self, handle: Any, gpu_index: int) -> dict[int, tuple[int, Any]]:
        """Profile id -> (NVML_GPU_INSTANCE_PROFILE_* index, info) for every profile offered."""
        nv = self.nv
        found: dict[int, tuple[int, Any]] = {}
        for index in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = self.versioned(nv.nvmlDeviceGetGpuInstanceProfileInfo, handle, index)
            except (nv.NVMLError_NotSupported, nv.NVMLError_InvalidArgument):
                continue  # not offered by this GPU (or unknown to this driver)
            except nv.NVMLError as exc:
                raise self.translate(exc, f"reading profile {index} of GPU {gpu_index}") from exc
            found.setdefault(info.id, (index, info))
        return found

    def ci_profile_info(self, gi: Any, slice_count: int, doing: str) -> Any:
        """The compute instance profile of ``slice_count`` slices with shared engines."""
        profile = self._ci_profiles.get(slice_count)
        if profile is None:
            raise NotSupportedError(
                f"{doing}: no compute instance profile has {slice_count} slices"
            )
        fn = self.nv.nvmlGpuInstanceGetComputeInstanceProfileInfo
        shared = self.nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        return self.call(doing, self.versioned, fn, gi, profile, shared)

    def possible_placements(
        self, handle: Any, gpu_index: int, profile_id: int
    ) -> list[tuple[int, int]]:
        """(start, size) of every placement the profile allows, occupied or not."""
        nv = self.nv
        doing = f"reading placements of profile {profile_id} on GPU {gpu_index}"
        fn = nv.nvmlDeviceGetGpuInstancePossiblePlacements
        count = ctypes.c_uint(0)
        self.call(doing, fn, handle, profile_id, None, ctypes.byref(count))
        placements = (nv.c_nvmlGpuInstancePlacement_t * count.value)()
        self.call(doing, fn, handle, profile_id, placements, ctypes.byref(count))
        return [(p.start, p.size) for p in placements[: count.value]]

    def gpu_instances(
        self, handle: Any, gpu_index: int, profile_id: int, capacity: int
    ) -> list[GpuInstance]:
        """The GPU instances of one profile (``capacity``: the profile's instanceCount)."""
        nv = self.nv
        doing = f"listing GPU instances of profile {profile_id} on GPU {gpu_index}"
        count = ctypes.c_uint(0)
        array = (nv.c_nvmlGpuInstance_t * capacity)()
        self.call(
            doing, nv.nvmlDeviceGetGpuInstances, handle, profile_id, array, ctypes.byref(count)
        )
        found = []
        for gi in array[: count.value]:
            info = self.call(doing, nv.nvmlGpuInstanceGetInfo, gi)
            found.append(GpuInstance(info.id, info.placement.start, gi))
        return found

    def gpu_instance(self, handle: Any, gpu_index: int, gi_id: int) -> Any:
        """The GPU instance's handle; NotFoundError if there is none with that id."""
        nv = self.nv
        try:
            return nv.nvmlDeviceGetGpuInstanceById(handle, gi_id)
        except (nv.NVMLError_NotFound, nv.NVMLError_InvalidArgument) as exc:
            raise NotFoundError(f"no GPU instance {gi_id} on GPU {gpu_index}: {exc}") from exc
        except nv.NVMLError as exc:
            raise self.translate(exc, f"finding GPU instance {gi_id} on GPU {gpu_index}") from exc

    def walk(
        self, handle: Any, gpu_index: int, gi_id: int | None = None
    ) -> list[tuple[MigDevice, Any]]:
        """(MIG device, its handle) of the GPU, or of one GPU instance, by a fresh walk.

        MIG device handles are not stable (indices are reused once a compute
        instance is gone), so callers walk again for every operation.
        """
        nv = self.nv
        count = self.call(
            f"counting MIG devices of GPU {gpu_index}", nv.nvmlDeviceGetMaxMigDeviceCount, handle
        )
        found = []
        for k in range(count):
            try:
                mig_handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
                dev = MigDevice(
                    k,
                    nv.nvmlDeviceGetGpuInstanceId(mig_handle),
                    nv.nvmlDeviceGetComputeInstanceId(mig_handle),
                    nv.nvmlDeviceGetUUID(mig_handle),
                )
            except (nv.NVMLError_NotFound, nv.NVMLError_InvalidArgument):
                continue  # no MIG device at k, or it went away while we walked
            except nv.NVMLError as exc:
                raise self.translate(exc, f"reading MIG device {k} of GPU {gpu_index}") from exc
            if gi_id is None or dev.gi_id == gi_id:
                found.append((dev, mig_handle))
        return sorted(found, key=lambda pair: (pair[0].gi_id, pair[0].ci_id))

    def profile_reports(
        self, handle: Any, gpu_index: int, model: mig.GpuModel | None
    ) -> list[ProfileReport]:
        """Every profile the GPU offers, with placements and capacity where NVML tells."""
        nv = self.nv
        names = {getattr(nv, n): n for n in dir(nv) if n.startswith("NVML_GPU_INSTANCE_PROFILE_")}
        reports = []
        for profile_id, (index, info) in self.profile_infos(handle, gpu_index).items():
            placements = _readable(self.possible_placements, handle, gpu_index, profile_id)
            remaining = _readable(
                self.call,
                f"reading the capacity left for profile {profile_id} on GPU {gpu_index}",
                nv.nvmlDeviceGetGpuInstanceRemainingCapacity,
                handle,
                profile_id,
            )
            sizes = {size for _, size in placements or ()}
            reports.append(
                ProfileReport(
                    index=index,
                    index_name=names.get(index, str(index)),
                    id=profile_id,
                    name=profile_name(model, profile_id, info),
                    nvml_name=nvml_name(info),
                    compute_slices=info.sliceCount,
                    memory_slices=sizes.pop() if len(sizes) == 1 else None,
                    max_count=info.instanceCount,
                    memory_mb=info.memorySizeMB,
                    sm_count=info.multiprocessorCount,
                    starts=None if placements is None else [s for s, _ in placements],
                    remaining=remaining,
                )
            )
        return sorted(reports, key=lambda r: (r.memory_mb, r.compute_slices, r.id))

    def processes(self, mig_handle: Any, uuid: str) -> list[int]:
        """PIDs NVML sees computing on one MIG device."""
        doing = f"listing processes on {uuid}"
        try:
            procs = self.call(doing, self.nv.nvmlDeviceGetComputeRunningProcesses, mig_handle)
        except self.nv.NVMLLibraryMismatchError as exc:  # a driver older than this pynvml
            raise MigError(f"{doing}: {exc}") from exc
        return [p.pid for p in procs]


def nvml_name(info: Any) -> str:
    """NVML's name of a profile, e.g. "MIG 1g.10gb" ("" in version-1 profile info)."""
    name = getattr(info, "name", "")
    return name.decode() if isinstance(name, bytes) else str(name)


def profile_name(model: mig.GpuModel | None, profile_id: int, info: Any) -> str:
    """migserve's name for a profile (the scaler plans with these), else NVML's."""
    if model is not None:
        try:
            return model.profile(profile_id).name
        except MigserveError:
            pass
    return nvml_name(info).removeprefix("MIG ") or f"profile-{profile_id}"


def _readable(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None when NVML needs more privileges to answer."""
    try:
        return fn(*args)
    except NoPermissionError as exc:
        log.debug("not readable without privileges: %s", exc)
        return None
