"""A fake ``pynvml`` module over simulated MIG GPUs, for testing the NVML backend.

``FakePynvml()`` is passed where the real module would be. It exposes the
functions, constants, ctypes structs and NVMLError classes the backend uses,
with NVML's semantics (nvml.h): profile *indices* give infos whose ``.id`` is
the profile id; placements obey ``migserve_shared.mig`` (the rules of the
simulated backend and the scaler); a placement not offered is
INVALID_ARGUMENT, one that does not fit INSUFFICIENT_RESOURCES; destroying a
compute instance with processes on it, or a GPU instance that still has
compute instances, is IN_USE; MIG devices sit at sparse, reused indices
(NOT_FOUND when empty) and their handles go stale when the compute instance
goes; structs and out-counts must come by reference (pynvml declares no
argtypes, so anything else would reach NVML by value); the MIG calls need a
privileged caller and MIG mode on (NOT_SUPPORTED otherwise).

Test hooks (not pynvml's): ``attach_process``, ``fail_next``, ``set_mig_mode``,
``external_slice`` (a slice somebody else made), ``calls`` (every API call).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from migserve_shared import mig

from fakes import pynvml_defs as d
from fakes.fake_gpus import (
    CI_SLICES,
    MAX_MIG_DEVICES,
    FakeGpu,
    FakeGpus,
    array_of,
    deref,
    invalid,
    mode_value,
)

__all__ = ["MUTATING", "FakeGpu", "FakePynvml"]

_MB = 1024 * 1024
#: functions that need a privileged caller (nvml.h: "Requires privileged user")
_PRIVILEGED = frozenset(
    {
        "nvmlDeviceGetGpuInstancePossiblePlacements",
        "nvmlDeviceGetGpuInstanceRemainingCapacity",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceDestroy",
        "nvmlDeviceGetGpuInstances",
        "nvmlDeviceGetGpuInstanceById",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
    }
)
#: every call that changes a GPU
MUTATING = frozenset(
    {
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceDestroy",
        "nvmlDeviceSetMigMode",
    }
)

F = TypeVar("F", bound=Callable[..., Any])


def _api(fn: F) -> F:
    """Record the call, honour injected failures, initialization and privileges; lock."""

    @functools.wraps(fn)
    def wrapper(self: FakePynvml, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls.append(fn.__name__)
            codes = self._failures.get(fn.__name__)
            if codes:
                self._failures[fn.__name__] = codes[1:]
                raise d.NVMLError(codes[0])
            if fn.__name__ != "nvmlInit" and self._inits == 0:
                raise d.NVMLError(d.NVML_ERROR_UNINITIALIZED)
            if fn.__name__ in _PRIVILEGED and not self.privileged:
                raise d.NVMLError(d.NVML_ERROR_NO_PERMISSION)
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class FakePynvml:
    """Stands in for the ``pynvml`` module (see the module docstring)."""

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (FakeGpu("A100-SXM4-40GB"),),
        *,
        privileged: bool = True,
        init_error: int | None = None,
        seed: str = "fake",
    ) -> None:
        self.privileged = privileged
        self.calls: list[str] = []
        self.gpus = FakeGpus(gpus, seed=seed)
        self._init_error = init_error
        self._inits = 0
        self._lock = threading.RLock()
        self._failures: dict[str, list[int]] = {}

    # Test hooks ------------------------------------------------------------------------
    def attach_process(self, mig_uuid: str, pid: int) -> None:
        """A process now computes on that MIG device."""
        self.gpus.processes.setdefault(mig_uuid, []).append(pid)

    def detach_process(self, mig_uuid: str, pid: int) -> None:
        self.gpus.processes[mig_uuid].remove(pid)

    def fail_next(self, function: str, code: int, times: int = 1) -> None:
        """The next ``times`` calls of ``function`` raise NVMLError(code)."""
        self._failures[function] = [code] * times

    def set_mig_mode(self, index: int, current: bool, pending: bool | None = None) -> None:
        dev = self.gpus.devs[index]
        dev.current, dev.pending = current, current if pending is None else pending

    def external_slice(self, index: int, profile: str, start: int, *, with_ci: bool = True) -> str:
        """Make a slice as somebody else would (no call recorded); its UUID, or ""."""
        dev = self.gpus.devs[index]
        assert dev.model is not None
        gi = self.gpus.make_gi(dev, dev.model.profile(profile), start)
        if not with_ci:
            return ""
        return self.gpus.make_ci(dev, gi, gi.profile.compute_slices).uuid

    def mutating_calls(self) -> list[str]:
        return [c for c in self.calls if c in MUTATING]

    # Init, devices ---------------------------------------------------------------------
    @_api
    def nvmlInit(self) -> None:
        if self._init_error is not None:
            raise d.NVMLError(self._init_error)
        self._inits += 1

    @_api
    def nvmlShutdown(self) -> None:
        self._inits -= 1

    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus.devs)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= index < len(self.gpus.devs):
            invalid()
        return ctypes.pointer(self.gpus.devs[index].node)

    @_api
    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self.gpus.dev(handle).name

    @_api
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        kind, obj = self.gpus.resolve(handle, d.c_nvmlDevice_t)
        return obj[1].uuid if kind == "mig" else obj.uuid

    @_api
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        total = self.gpus.dev(handle).memory_mb * _MB
        return d.c_nvmlMemory_t(total=total, free=total, used=0)

    @_api
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        dev = self.gpus.dev(device)
        if dev.model is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_SUPPORTED)
        return [mode_value(dev.current), mode_value(dev.pending)]

    @_api
    def nvmlDeviceSetMigMode(self, device: Any, mode: int) -> int:
        raise AssertionError("migserve must never change a GPU's MIG mode")

    # GPU instance profiles -------------------------------------------------------------
    @_api
    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, device: Any, profile: int, version: int = 2
    ) -> Any:
        model = self.gpus.mig_dev(device).model
        prof = next((p for p in model.profiles if p.nvml_index == profile), None)
        if prof is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_SUPPORTED)
        if version == 2:
            info = d.c_nvmlGpuInstanceProfileInfo_v2_t()
            info.version = d.nvmlGpuInstanceProfileInfo_v2
            info.name = f"MIG {prof.name}"
        else:
            info = d.c_nvmlGpuInstanceProfileInfo_t()
        info.id, info.sliceCount, info.instanceCount = prof.id, prof.compute_slices, prof.max_count
        info.multiprocessorCount, info.memorySizeMB = prof.sm_count, prof.memory_mb
        return info

    @_api
    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, device: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        prof = self.gpus.profile(self.gpus.dev(device), profileId, d.NVML_ERROR_NOT_SUPPORTED)
        count = deref(countRef, ctypes.c_uint)
        if placementsRef is not None:
            placements = array_of(placementsRef, d.c_nvmlGpuInstancePlacement_t)
            if len(placements) < len(prof.starts):
                raise d.NVMLError(d.NVML_ERROR_INSUFFICIENT_SIZE)
            for k, start in enumerate(prof.starts):
                placements[k].start, placements[k].size = start, prof.memory_slices
        count.value = len(prof.starts)
        return d.NVML_SUCCESS

    @_api
    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: Any, profileId: int) -> int:
        dev = self.gpus.mig_dev(device)
        prof = self.gpus.profile(dev, profileId, d.NVML_ERROR_NOT_SUPPORTED)
        placed = dev.placed()
        more = 0
        while starts := mig.free_starts(dev.model, placed, prof):
            placed.append(mig.Slice(prof.id, starts[0]))
            more += 1
        return more

    # GPU instances ---------------------------------------------------------------------
    @_api
    def nvmlDeviceCreateGpuInstanceWithPlacement(
        self, device: Any, profileId: int, placement: Any
    ) -> Any:
        dev = self.gpus.mig_dev(device)
        prof = self.gpus.profile(dev, profileId, d.NVML_ERROR_INVALID_ARGUMENT)
        where = deref(placement, d.c_nvmlGpuInstancePlacement_t)
        if where.start not in prof.starts or where.size != prof.memory_slices:
            invalid()
        return ctypes.pointer(self.gpus.make_gi(dev, prof, where.start).node)

    @_api
    def nvmlDeviceGetGpuInstances(
        self, device: Any, profileId: int, gpuInstancesRef: Any, countRef: Any
    ) -> int:
        dev = self.gpus.mig_dev(device)
        count = deref(countRef, ctypes.c_uint)
        instances = array_of(gpuInstancesRef, d.c_nvmlGpuInstance_t)
        mine = [gi for gi in dev.gis.values() if gi.profile.id == profileId]
        if len(instances) < len(mine):
            raise d.NVMLError(d.NVML_ERROR_INSUFFICIENT_SIZE)
        for k, gi in enumerate(mine):
            instances[k] = ctypes.pointer(gi.node)
        count.value = len(mine)
        return d.NVML_SUCCESS

    @_api
    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        gi = self.gpus.mig_dev(device).gis.get(gpuInstanceId)
        if gi is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_FOUND)
        return ctypes.pointer(gi.node)

    @_api
    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        dev, gi = self.gpus.gi(gpuInstance)
        return d.c_nvmlGpuInstanceInfo_t(
            device=ctypes.pointer(dev.node),
            id=gi.id,
            profileId=gi.profile.id,
            placement=d.c_nvmlGpuInstancePlacement_t(gi.start, gi.profile.memory_slices),
        )

    @_api
    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> int:
        dev, gi = self.gpus.gi(gpuInstance)
        if gi.cis:  # nvml.h: IN_USE while compute instances are active on it
            raise d.NVMLError(d.NVML_ERROR_IN_USE)
        self.gpus.drop_gi(dev, gi)
        return d.NVML_SUCCESS

    # Compute instances -----------------------------------------------------------------
    @_api
    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: Any, profile: int, engProfile: int, version: int = 2
    ) -> Any:
        _, gi = self.gpus.gi(device)
        slices = CI_SLICES.get(profile)
        if engProfile != d.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
            invalid()
        if slices is None or slices > gi.profile.compute_slices or slices in (6, 8):
            raise d.NVMLError(d.NVML_ERROR_NOT_SUPPORTED)
        if version == 2:
            info = d.c_nvmlComputeInstanceProfileInfo_v2_t()
            info.version = d.nvmlComputeInstanceProfileInfo_v2
            info.name = f"MIG {slices}c.{gi.profile.name}"
        else:
            info = d.c_nvmlComputeInstanceProfileInfo_t()
        info.id, info.sliceCount = profile, slices
        info.instanceCount = gi.profile.compute_slices // slices
        info.multiprocessorCount = gi.profile.sm_count * slices // gi.profile.compute_slices
        return info

    @_api
    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        dev, gi = self.gpus.gi(gpuInstance)
        slices = CI_SLICES.get(profileId)
        if slices is None or slices > gi.profile.compute_slices:
            invalid()
        if sum(ci.slices for ci in gi.cis.values()) + slices > gi.profile.compute_slices:
            raise d.NVMLError(d.NVML_ERROR_INSUFFICIENT_RESOURCES)
        return ctypes.pointer(self.gpus.make_ci(dev, gi, slices).node)

    @_api
    def nvmlGpuInstanceGetComputeInstanceById(
        self, gpuInstance: Any, computeInstanceId: int
    ) -> Any:
        _, gi = self.gpus.gi(gpuInstance)
        ci = gi.cis.get(computeInstanceId)
        if ci is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_FOUND)
        return ctypes.pointer(ci.node)

    @_api
    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        dev, gi, ci = self.gpus.ci(computeInstance)
        return d.c_nvmlComputeInstanceInfo_t(
            device=ctypes.pointer(dev.node),
            gpuInstance=ctypes.pointer(gi.node),
            id=ci.id,
            profileId=ci.profile,
            placement=d.c_nvmlComputeInstancePlacement_t(0, ci.slices),
        )

    @_api
    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> int:
        dev, gi, ci = self.gpus.ci(computeInstance)
        if self.gpus.processes.get(ci.uuid):  # nvml.h: IN_USE while processes run on it
            raise d.NVMLError(d.NVML_ERROR_IN_USE)
        self.gpus.drop_ci(dev, gi, ci)
        return d.NVML_SUCCESS

    # MIG devices -----------------------------------------------------------------------
    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        dev = self.gpus.dev(device)
        return MAX_MIG_DEVICES if dev.model is not None and dev.current else 0

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        dev = self.gpus.mig_dev(device)
        if not 0 <= index < MAX_MIG_DEVICES:
            invalid()
        ci = dev.slots[index]
        if ci is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_FOUND)
        return ctypes.pointer(ci.mig_node)

    @_api
    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        return self.gpus.mig_device(device)[0].id

    @_api
    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        return self.gpus.mig_device(device)[1].id

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        gi, ci = self.gpus.mig_device(handle)
        return [
            types.SimpleNamespace(
                pid=pid, usedGpuMemory=0, gpuInstanceId=gi.id, computeInstanceId=ci.id
            )
            for pid in self.gpus.processes.get(ci.uuid, [])
        ]


# pynvml's constants, structs and error classes, as attributes of the fake "module"
for _name in dir(d):
    if _name.startswith(("NVML", "c_nvml", "struct_c_nvml", "nvml")):
        setattr(FakePynvml, _name, getattr(d, _name))
