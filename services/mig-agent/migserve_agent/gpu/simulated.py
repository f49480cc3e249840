"""A simulated MIG GPU backend: the rules of ``migserve_shared.mig``, state in a file.

Slices are bookkeeping only: no GPU is touched. They follow exactly the
placement rules of ``migserve_shared.mig`` (the one implementation, also used
by the scaler) and NVML's error semantics. The state lives in a JSON file in
the agent's state directory, so slices survive an agent restart like real MIG
slices do. UUIDs are deterministic: a GPU's follows from the backend's seed
and its index, a slice's from its GPU, its GI id and how many slices that GPU
has made so far.

Processes "on" a slice are found as on a real node: every process whose
CUDA_VISIBLE_DEVICES (or NVIDIA_VISIBLE_DEVICES) names the slice's UUID.
Destroying a slice that has any raises ``InUseError``.

Latency (create, destroy) and faults (failing creates, busy destroys, slow
operations) come from ``SimGpuConfig``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from migserve_shared import mig
from migserve_shared.errors import (
    ConfigError,
    InsufficientResourcesError,
    InUseError,
    MigError,
    NoPermissionError,
    NotFoundError,
    NotSupportedError,
)

from migserve_agent.gpu.base import GpuInfo, SliceInfo

log = logging.getLogger(__name__)

_NAMESPACE = uuidlib.UUID("6f1c7a52-3c1e-4f0e-9a55-6d3e7f0b2a11")
_NonNeg = Annotated[int, msgspec.Meta(ge=0)]
_NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]

#: how an injected create failure fails: NVML's codes; "internal" is an error NVML
#: has no specific code for (NVML_ERROR_UNKNOWN), which a second attempt may not see
FaultCode = Literal[
    "insufficient_resources", "not_supported", "no_permission", "in_use", "internal"
]
_FAULT_ERRORS: dict[str, type[MigError]] = {
    "insufficient_resources": InsufficientResourcesError,
    "not_supported": NotSupportedError,
    "no_permission": NoPermissionError,
    "in_use": InUseError,
    "internal": MigError,
}


class SimFaults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Faults to inject, e.g. ``{"fail_create": 1, "destroy_in_use": 2, "slow_s": 1.5}``."""

    #: the next N creates fail with ``fail_create_code``
    fail_create: _NonNeg = 0
    fail_create_code: FaultCode = "insufficient_resources"
    #: the next N destroys fail with InUseError as if a process held the slice
    destroy_in_use: _NonNeg = 0
    #: extra seconds every create and destroy takes
    slow_s: _NonNegFloat = 0.0


class SimGpuConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Latency and faults of the simulated GPUs."""

    create_latency_s: _NonNegFloat = 0.0
    destroy_latency_s: _NonNegFloat = 0.0
    faults: SimFaults = msgspec.field(default_factory=SimFaults)


def parse_faults(text: str, *, variable: str) -> SimFaults:
    """Faults from JSON; ConfigError naming ``variable`` on bad input."""
    try:
        return msgspec.json.decode(text, type=SimFaults)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{variable}={text!r} is not valid fault JSON: {exc}") from exc


class SimGpuSpec(msgspec.Struct, frozen=True):
    """One simulated GPU: its model name (a ``mig.GPU_MODELS`` name or alias)."""

    model: str
    mig_enabled: bool = True


# State file ------------------------------------------------------------------------
class _SliceRec(msgspec.Struct):
    gi_id: int
    profile_id: int
    start: int
    uuid: str


class _GpuRec(msgspec.Struct):
    index: int
    model: str
    uuid: str
    mig_enabled: bool = True
    made: int = 0
    slices: list[_SliceRec] = msgspec.field(default_factory=list)


class _StateFile(msgspec.Struct):
    version: int = 1
    gpus: list[_GpuRec] = msgspec.field(default_factory=list)


def processes_using(device_uuid: str) -> list[int]:
    """PIDs whose CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES names ``device_uuid``."""
    wanted = device_uuid.encode()
    keys = (b"CUDA_VISIBLE_DEVICES=", b"NVIDIA_VISIBLE_DEVICES=")
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        for var in environ.split(b"\0"):
            if var.startswith(keys) and wanted in var.split(b"=", 1)[1].split(b","):
                pids.append(int(entry.name))
                break
    return sorted(pids)


class SimulatedGpuBackend:
    """``GpuBackend`` over simulated GPUs (thread-safe; state in ``state_file``)."""

    name = "simulated"

    def __init__(
        self,
        gpus: Sequence[SimGpuSpec],
        *,
        state_file: Path,
        seed: str,
        config: SimGpuConfig | None = None,
        process_finder: Callable[[str], list[int]] = processes_using,
    ) -> None:
        if not gpus:
            raise ConfigError("a simulated node needs at least one GPU")
        self._models = [mig.gpu_model(g.model) for g in gpus]
        self._specs = list(gpus)
        self._file = state_file
        self._seed = seed
        self._config = config or SimGpuConfig()
        self._faults = self._config.faults
        self._find_processes = process_finder
        self._lock = threading.Lock()
        self._state = self._load()
        self._save()

    # Protocol ----------------------------------------------------------------------
    def list_gpus(self) -> list[GpuInfo]:
        with self._lock:
            return [
                GpuInfo(
                    index=g.index,
                    uuid=g.uuid,
                    name=_nvml_name(self._models[g.index]),
                    mig_enabled=g.mig_enabled,
                    memory_mb=self._models[g.index].memory_mb,
                )
                for g in self._state.gpus
            ]

    def list_slices(self, gpu_index: int) -> list[SliceInfo]:
        with self._lock:
            gpu = self._gpu(gpu_index)
            return [self._info(gpu, s) for s in sorted(gpu.slices, key=lambda s: s.start)]

    def create_slice(self, gpu_index: int, profile: str, start: int) -> SliceInfo:
        self._sleep(self._config.create_latency_s)
        with self._lock:
            gpu = self._gpu(gpu_index)
            model = self._models[gpu_index]
            if not gpu.mig_enabled:
                raise NotSupportedError(f"MIG is not enabled on GPU {gpu_index} ({gpu.uuid})")
            prof = model.profile(profile)
            if self._faults.fail_create:
                self._faults = msgspec.structs.replace(
                    self._faults, fail_create=self._faults.fail_create - 1
                )
                error = _FAULT_ERRORS[self._faults.fail_create_code]
                raise error(f"injected fault: creating {prof.name} at {start} on GPU {gpu_index}")
            placed = [mig.Slice(s.profile_id, s.start) for s in gpu.slices]
            mig.check_place(model, placed, prof, start)
            used = {s.gi_id for s in gpu.slices}
            gi_id = next(i for i in range(1, 64) if i not in used)
            gpu.made += 1
            seed = f"{gpu.uuid}/{gi_id}/{gpu.made}"
            rec = _SliceRec(gi_id, prof.id, start, f"MIG-{uuidlib.uuid5(_NAMESPACE, seed)}")
            gpu.slices.append(rec)
            self._save()
            log.info(
                "simulated GPU %d: created %s at %d (gi %d)", gpu_index, prof.name, start, gi_id
            )
            return self._info(gpu, rec)

    def destroy_slice(self, gpu_index: int, gi_id: int) -> None:
        self._sleep(self._config.destroy_latency_s)
        with self._lock:
            gpu = self._gpu(gpu_index)
            rec = self._slice(gpu, gi_id)
            if self._faults.destroy_in_use:
                self._faults = msgspec.structs.replace(
                    self._faults, destroy_in_use=self._faults.destroy_in_use - 1
                )
                raise InUseError(f"injected fault: GPU {gpu_index} GI {gi_id} is in use")
            pids = self._find_processes(rec.uuid)
            if pids:
                raise InUseError(
                    f"GPU {gpu_index} GI {gi_id} ({rec.uuid}) has processes on it: {pids}"
                )
            gpu.slices.remove(rec)
            self._save()
            log.info("simulated GPU %d: destroyed GI %d", gpu_index, gi_id)

    def slice_processes(self, gpu_index: int, gi_id: int) -> list[int]:
        with self._lock:
            rec = self._slice(self._gpu(gpu_index), gi_id)
        return self._find_processes(rec.uuid)

    def close(self) -> None:
        return None

    # Faults ------------------------------------------------------------------------
    @property
    def faults(self) -> SimFaults:
        return self._faults

    def inject(self, faults: SimFaults) -> None:
        """Replace the faults still to come (tests and chaos runs)."""
        with self._lock:
            self._faults = faults

    # Internals -------------------------------------------------------------------
    def _sleep(self, latency: float) -> None:
        delay = latency + self._faults.slow_s
        if delay > 0:
            time.sleep(delay)

    def _gpu(self, index: int) -> _GpuRec:
        if not 0 <= index < len(self._state.gpus):
            raise NotFoundError(
                f"no GPU with index {index} (this node has {len(self._state.gpus)})"
            )
        return self._state.gpus[index]

    def _slice(self, gpu: _GpuRec, gi_id: int) -> _SliceRec:
        for rec in gpu.slices:
            if rec.gi_id == gi_id:
                return rec
        raise NotFoundError(f"no GPU instance {gi_id} on GPU {gpu.index} ({gpu.uuid})")

    def _info(self, gpu: _GpuRec, rec: _SliceRec) -> SliceInfo:
        prof = self._models[gpu.index].profile(rec.profile_id)
        return SliceInfo(
            gpu_index=gpu.index,
            gi_id=rec.gi_id,
            ci_id=0,
            profile_id=prof.id,
            profile=prof.name,
            start=rec.start,
            uuid=rec.uuid,
            memory_mb=prof.memory_mb,
            sm_count=prof.sm_count,
        )

    def _fresh_gpu(self, index: int) -> _GpuRec:
        model = self._models[index]
        gpu_uuid = f"GPU-{uuidlib.uuid5(_NAMESPACE, f'{self._seed}/gpu/{index}/{model.name}')}"
        return _GpuRec(index, model.name, gpu_uuid, self._specs[index].mig_enabled)

    def _load(self) -> _StateFile:
        saved = _StateFile()
        if self._file.exists():
            try:
                saved = msgspec.json.decode(self._file.read_bytes(), type=_StateFile)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                broken = self._file.with_suffix(".corrupt")
                log.warning("simulated GPU state %s unreadable (%s); moved to %s", self._file, exc,
                            broken)  # fmt: skip
                self._file.replace(broken)
        by_index = {g.index: g for g in saved.gpus}
        state = _StateFile()
        for index, model in enumerate(self._models):
            old = by_index.get(index)
            if old is not None and old.model == model.name:
                old.mig_enabled = self._specs[index].mig_enabled
                state.gpus.append(old)
                continue
            if old is not None:
                log.warning("simulated GPU %d was a %s, now a %s: its %d slices are gone",
                            index, old.model, model.name, len(old.slices))  # fmt: skip
            state.gpus.append(self._fresh_gpu(index))
        return state

    def _save(self) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self._state))
        os.replace(tmp, self._file)


def _nvml_name(model: mig.GpuModel) -> str:
    """The name NVML would report, e.g. "NVIDIA A100-SXM4-40GB"."""
    return f"NVIDIA {model.nvml_names[0]}"
