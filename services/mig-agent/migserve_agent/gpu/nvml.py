"""The NVML GPU backend: real MIG slices through nvidia-ml-py (``import pynvml``).

This is the only module that imports pynvml, and only when asked
(``load_pynvml``), so the agent runs without nvidia-ml-py on simulated GPUs.
The module object is a constructor parameter: tests pass a fake built on
``migserve_shared.mig``'s rules. The calls themselves and the translation of
NVML errors live in ``gpu/nvml_calls.py``.

One slice (FACTS.md, nvml.h):

1. MIG mode must be enabled, now and after the next reset; migserve never changes it;
2. ``nvmlDeviceGetGpuInstanceProfileInfo(h, NVML_GPU_INSTANCE_PROFILE_*)``: the
   profile *index* gives the info whose ``.id`` is the profile *id*;
3. the profile's possible placements: the requested start must be one of them;
4. ``nvmlDeviceCreateGpuInstanceWithPlacement(h, id, byref(placement))`` (pynvml
   declares no argtypes: the struct must go by reference);
5. one compute instance of the same slice count with shared engines, spanning it;
6. the UUID: walk the MIG device handles (NotFound for empty indices) and match
   the GPU and compute instance ids. Handles are not stable: walked anew each time.

Teardown destroys the compute instance(s), then the GPU instance. Memory sizes
and SM counts are NVML's, not the nominal ones in the profile names.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from migserve_shared import mig
from migserve_shared.errors import (
    InsufficientResourcesError,
    InUseError,
    MigError,
    MigserveError,
    NotFoundError,
    NotSupportedError,
)

from migserve_agent.gpu.base import GpuInfo, SliceInfo
from migserve_agent.gpu.mig_mode import GpuUnusableError, MigMode, MigModeOffError, enable_hint
from migserve_agent.gpu.nvml_calls import MigDevice, NvmlCalls, ProfileReport, profile_name
from migserve_agent.gpu.simulated import processes_using

log = logging.getLogger(__name__)

_MB = 1024 * 1024


class NvmlUnavailableError(GpuUnusableError):
    """NVML cannot be used here: no nvidia-ml-py, no driver, or no GPU."""


def load_pynvml() -> Any:
    """The real pynvml module; NvmlUnavailableError if nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailableError(
            f"NVML is not available: nvidia-ml-py is not installed ({exc}); "
            "install migserve-agent[nvml]"
        ) from exc
    return pynvml


class NvmlGpuBackend:
    """``GpuBackend`` over the node's real GPUs (thread-safe; changes serialized per GPU)."""

    name = "nvml"

    def __init__(
        self,
        *,
        nvml: Any = None,
        gpu_indices: Sequence[int] | None = None,
        process_finder: Callable[[str], list[int]] = processes_using,
        uuid_wait_s: float = 2.0,
    ) -> None:
        nv = nvml if nvml is not None else load_pynvml()
        self._nv = nv
        self._calls = NvmlCalls(nv)
        self._find_processes = process_finder
        self._uuid_wait_s = uuid_wait_s
        try:
            nv.nvmlInit()
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            raise NvmlUnavailableError(f"NVML is not available: {exc}") from exc
        self._open = True
        try:
            self._indices = _select(count, gpu_indices)
            self._identity = {i: self._read_identity(i) for i in self._indices}
        except BaseException:
            self.close()
            raise
        self._locks = {i: threading.Lock() for i in self._indices}

    # Protocol ----------------------------------------------------------------------
    def list_gpus(self) -> list[GpuInfo]:
        gpus = []
        for index in self._indices:
            uuid, name, memory_mb = self._identity[index]
            mode = self.mig_mode(index)
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=uuid,
                    name=name,
                    mig_enabled=mode.enabled,
                    memory_mb=memory_mb,
                    mig_mode=mode.describe(),
                )
            )
        return gpus

    def list_slices(self, gpu_index: int) -> list[SliceInfo]:
        with self._lock(gpu_index):
            handle = self._handle(gpu_index)
            if not self._calls.mig_mode(handle, gpu_index).current:
                return []
            return self._slices(handle, gpu_index)

    def create_slice(self, gpu_index: int, profile: str, start: int) -> SliceInfo:
        calls, nv = self._calls, self._nv
        with self._lock(gpu_index):
            handle = self._handle(gpu_index)
            prof = self._require_mig(handle, gpu_index).profile(profile)
            where = f"{prof.name} at memory slice {start} on GPU {gpu_index}"
            info = calls.profile_info(handle, prof.nvml_index, f"reading profile {where}")
            if info.sliceCount != prof.compute_slices:
                raise NotSupportedError(
                    f"NVML profile index {prof.nvml_index} of GPU {gpu_index} has "
                    f"{info.sliceCount} compute slices; {prof.name} needs {prof.compute_slices}"
                )
            placement = self._placement(handle, gpu_index, prof.name, info.id, start)
            try:
                gi = calls.call(
                    f"creating {where} (profile id {info.id})",
                    nv.nvmlDeviceCreateGpuInstanceWithPlacement,
                    handle,
                    info.id,
                    ctypes.byref(placement),
                )
            except InsufficientResourcesError as exc:
                now = self._layout_text(handle, gpu_index)
                raise InsufficientResourcesError(
                    f"{exc}; slices on GPU {gpu_index} now: {now}"
                ) from exc.__cause__
            return self._finish(handle, gpu_index, gi, name=prof.name, info=info, where=where)

    def destroy_slice(self, gpu_index: int, gi_id: int) -> None:
        calls, nv = self._calls, self._nv
        with self._lock(gpu_index):
            handle = self._handle(gpu_index)
            gi = calls.gpu_instance(handle, gpu_index, gi_id)
            where = f"GPU instance {gi_id} on GPU {gpu_index}"
            for dev, _ in calls.walk(handle, gpu_index, gi_id):
                ci = calls.call(
                    f"finding compute instance {dev.ci_id} of {where}",
                    nv.nvmlGpuInstanceGetComputeInstanceById,
                    gi,
                    dev.ci_id,
                )
                try:
                    calls.call(
                        f"destroying compute instance {dev.ci_id} of {where} ({dev.uuid})",
                        nv.nvmlComputeInstanceDestroy,
                        ci,
                    )
                except InUseError as exc:
                    raise InUseError(
                        f"{exc}; processes on it: {self._pids_text(handle, gpu_index, gi_id)}"
                    ) from exc.__cause__
            calls.call(f"destroying {where}", nv.nvmlGpuInstanceDestroy, gi)
            log.info("NVML: destroyed %s", where)

    def slice_processes(self, gpu_index: int, gi_id: int) -> list[int]:
        with self._lock(gpu_index):
            handle = self._handle(gpu_index)
            self._calls.gpu_instance(handle, gpu_index, gi_id)
            return self._pids(handle, gpu_index, gi_id)

    def close(self) -> None:
        """Shut NVML down (once)."""
        if not self._open:
            return
        self._open = False
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError as exc:
            log.warning("NVML shutdown failed: %s", exc)

    def __enter__(self) -> NvmlGpuBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Read-only views (migserve gpu inspect) ------------------------------------------
    def mig_mode(self, gpu_index: int) -> MigMode:
        return self._calls.mig_mode(self._handle(gpu_index), gpu_index)

    def profiles(self, gpu_index: int) -> list[ProfileReport]:
        """Every GPU instance profile the GPU offers (none while MIG is off)."""
        handle = self._handle(gpu_index)
        if not self._calls.mig_mode(handle, gpu_index).current:
            return []
        return self._calls.profile_reports(handle, gpu_index, self._model(gpu_index))

    def mig_devices(self, gpu_index: int) -> list[MigDevice]:
        """The MIG devices (readable without root, unlike the GPU instances)."""
        handle = self._handle(gpu_index)
        if not self._calls.mig_mode(handle, gpu_index).current:
            return []
        return [dev for dev, _ in self._calls.walk(handle, gpu_index)]

    # Internals -----------------------------------------------------------------------
    def _read_identity(self, index: int) -> tuple[str, str, int]:
        calls, nv = self._calls, self._nv
        handle = calls.call(f"opening GPU {index}", nv.nvmlDeviceGetHandleByIndex, index)
        uuid = calls.call(f"reading GPU {index}'s UUID", nv.nvmlDeviceGetUUID, handle)
        name = calls.call(f"reading GPU {index}'s name", nv.nvmlDeviceGetName, handle)
        memory = calls.call(f"reading GPU {index}'s memory", nv.nvmlDeviceGetMemoryInfo, handle)
        return uuid, name, memory.total // _MB

    def _lock(self, gpu_index: int) -> threading.Lock:
        lock = self._locks.get(gpu_index)
        if lock is None:
            managed = list(self._indices)
            raise NotFoundError(f"no GPU with index {gpu_index} managed here (managed: {managed})")
        return lock

    def _handle(self, gpu_index: int) -> Any:
        self._lock(gpu_index)  # NotFoundError for a GPU not managed here
        return self._calls.call(
            f"opening GPU {gpu_index}", self._nv.nvmlDeviceGetHandleByIndex, gpu_index
        )

    def _model(self, gpu_index: int) -> mig.GpuModel | None:
        try:
            return mig.gpu_model(self._identity[gpu_index][1])
        except MigserveError:
            return None

    def _require_mig(self, handle: Any, gpu_index: int) -> mig.GpuModel:
        mode = self._calls.mig_mode(handle, gpu_index)
        uuid, name, _ = self._identity[gpu_index]
        if not mode.enabled:
            raise MigModeOffError(
                f"GPU {gpu_index} ({name}, {uuid}) has MIG mode off ({mode.describe()}): "
                f"{enable_hint(gpu_index)}"
            )
        return mig.gpu_model(name)

    def _placement(
        self, handle: Any, gpu_index: int, name: str, profile_id: int, start: int
    ) -> Any:
        placements = self._calls.possible_placements(handle, gpu_index, profile_id)
        for first, size in placements:
            if first == start:
                return self._nv.c_nvmlGpuInstancePlacement_t(start=start, size=size)
        allowed = ", ".join(str(s) for s, _ in placements)
        raise InsufficientResourcesError(
            f"{name} cannot start at memory slice {start} on GPU {gpu_index} "
            f"(NVML allows: {allowed or 'none'})"
        )

    def _finish(
        self, handle: Any, gpu_index: int, gi: Any, *, name: str, info: Any, where: str
    ) -> SliceInfo:
        """Give a new GPU instance its compute instance and find its UUID; undo on failure."""
        calls, nv = self._calls, self._nv
        ci = None
        try:
            gi_info = calls.call(f"reading the new {where}", nv.nvmlGpuInstanceGetInfo, gi)
            ci_info = calls.ci_profile_info(
                gi, info.sliceCount, f"reading the compute instance profile for {where}"
            )
            ci = calls.call(
                f"creating the compute instance of {where}",
                nv.nvmlGpuInstanceCreateComputeInstance,
                gi,
                ci_info.id,
            )
            ci_id = calls.call(
                f"reading the compute instance of {where}", nv.nvmlComputeInstanceGetInfo, ci
            ).id
            uuid = self._wait_uuid(handle, gpu_index, gi_info.id, ci_id)
        except BaseException:
            self._undo(gi, ci, where)
            raise
        log.info("NVML: created %s: GI %d CI %d %s", where, gi_info.id, ci_id, uuid)
        return SliceInfo(
            gpu_index=gpu_index,
            gi_id=gi_info.id,
            ci_id=ci_id,
            profile_id=info.id,
            profile=name,
            start=gi_info.placement.start,
            uuid=uuid,
            memory_mb=info.memorySizeMB,
            sm_count=info.multiprocessorCount,
        )

    def _undo(self, gi: Any, ci: Any, where: str) -> None:
        nv = self._nv
        try:
            if ci is not None:
                nv.nvmlComputeInstanceDestroy(ci)
            nv.nvmlGpuInstanceDestroy(gi)
        except nv.NVMLError as exc:
            log.error(
                "NVML: undoing the half-made %s failed (%s); it stays on the GPU, "
                "not recorded as migserve's",
                where,
                exc,
            )

    def _wait_uuid(self, handle: Any, gpu_index: int, gi_id: int, ci_id: int) -> str:
        deadline = time.monotonic() + self._uuid_wait_s
        while True:
            for dev, _ in self._calls.walk(handle, gpu_index, gi_id):
                if dev.ci_id == ci_id:
                    return dev.uuid
            if time.monotonic() >= deadline:
                raise MigError(
                    f"GPU {gpu_index}: no MIG device for GPU instance {gi_id}, compute "
                    f"instance {ci_id} appeared within {self._uuid_wait_s}s"
                )
            time.sleep(0.05)

    def _slices(self, handle: Any, gpu_index: int) -> list[SliceInfo]:
        calls = self._calls
        model = self._model(gpu_index)
        devices: dict[int, list[MigDevice]] = {}
        for dev, _ in calls.walk(handle, gpu_index):
            devices.setdefault(dev.gi_id, []).append(dev)
        slices = []
        for profile_id, (_, info) in calls.profile_infos(handle, gpu_index).items():
            for gi in calls.gpu_instances(handle, gpu_index, profile_id, info.instanceCount):
                # our slices have one compute instance; a GI without any has no UUID
                first = next(iter(devices.get(gi.gi_id, ())), None)
                slices.append(
                    SliceInfo(
                        gpu_index=gpu_index,
                        gi_id=gi.gi_id,
                        ci_id=first.ci_id if first else -1,
                        profile_id=profile_id,
                        profile=profile_name(model, profile_id, info),
                        start=gi.start,
                        uuid=first.uuid if first else "",
                        memory_mb=info.memorySizeMB,
                        sm_count=info.multiprocessorCount,
                    )
                )
        return sorted(slices, key=lambda s: (s.start, s.gi_id))

    def _layout_text(self, handle: Any, gpu_index: int) -> str:
        """The GPU's slices as "3g.20gb@0, 1g.5gb@4", for error messages (best effort)."""
        try:
            slices = self._slices(handle, gpu_index)
        except MigserveError as exc:
            return f"unknown ({exc})"
        return ", ".join(f"{s.profile}@{s.start}" for s in slices) or "none"

    def _pids_text(self, handle: Any, gpu_index: int, gi_id: int) -> str:
        try:
            return str(self._pids(handle, gpu_index, gi_id))
        except MigserveError as exc:
            return f"unknown ({exc})"

    def _pids(self, handle: Any, gpu_index: int, gi_id: int) -> list[int]:
        """Processes NVML sees on the slice's MIG devices, and those started for them."""
        pids: set[int] = set()
        for dev, mig_handle in self._calls.walk(handle, gpu_index, gi_id):
            pids.update(self._calls.processes(mig_handle, dev.uuid))
            pids.update(self._find_processes(dev.uuid))
        return sorted(pids)


def _select(count: int, wanted: Sequence[int] | None) -> tuple[int, ...]:
    if count == 0:
        raise NvmlUnavailableError("NVML is not available: it sees no NVIDIA GPU")
    if wanted is None:
        return tuple(range(count))
    missing = sorted(i for i in wanted if not 0 <= i < count)
    if missing:
        raise GpuUnusableError(
            f"no GPU with index {', '.join(map(str, missing))}: NVML sees {count} GPU(s), "
            f"indices 0..{count - 1}"
        )
    return tuple(sorted(set(wanted)))
