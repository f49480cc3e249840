"""The simulated GPUs behind the fake pynvml: devices, GPU instances and compute
instances on ``migserve_shared.mig``'s rules, and their ctypes handles.

Handles are real ctypes pointers to per-object opaque structs, resolved by
address; a destroyed object's handle resolves to nothing (INVALID_ARGUMENT),
like a stale NVML handle. Objects are never freed, so addresses are never reused.
"""

from __future__ import annotations

import ctypes
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from migserve_shared import mig
from migserve_shared.errors import InsufficientResourcesError, NotSupportedError

from fakes import pynvml_defs as d

_NS = uuidlib.UUID("0b7f5a8e-6a55-4c1f-9f57-1d9a3c2e7b10")
#: nvmlDeviceGetMaxMigDeviceCount on 7-compute-slice GPUs
MAX_MIG_DEVICES = 7
#: NVML_COMPUTE_INSTANCE_PROFILE_* index -> compute slices
CI_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6}


@dataclass
class FakeGpu:
    """One fake GPU: a ``mig.GPU_MODELS`` name, or another name for a GPU without MIG."""

    model: str
    mig_current: bool = True
    #: None: the same as ``mig_current``
    mig_pending: bool | None = None


@dataclass(eq=False)
class CiState:
    id: int
    profile: int
    slices: int
    uuid: str
    slot: int
    node: Any = field(default_factory=d.struct_c_nvmlComputeInstance_t)
    mig_node: Any = field(default_factory=d.struct_c_nvmlDevice_t)


@dataclass(eq=False)
class GiState:
    id: int
    profile: mig.Profile
    start: int
    node: Any = field(default_factory=d.struct_c_nvmlGpuInstance_t)
    cis: dict[int, CiState] = field(default_factory=dict)


@dataclass(eq=False)
class DevState:
    index: int
    name: str
    uuid: str
    model: mig.GpuModel | None
    memory_mb: int
    current: bool
    pending: bool
    node: Any = field(default_factory=d.struct_c_nvmlDevice_t)
    gis: dict[int, GiState] = field(default_factory=dict)
    slots: list[CiState | None] = field(default_factory=lambda: [None] * MAX_MIG_DEVICES)

    def placed(self) -> list[mig.Slice]:
        return [mig.Slice(gi.profile.id, gi.start) for gi in self.gis.values()]


class FakeGpus:
    """The GPUs, their instances and the handles that name them."""

    def __init__(self, gpus: Sequence[FakeGpu], *, seed: str) -> None:
        self._seed = seed
        self._made = 0
        self._handles: dict[int, tuple[str, Any]] = {}
        self.processes: dict[str, list[int]] = {}
        self.devs = [self._new_dev(i, g) for i, g in enumerate(gpus)]

    # Changes ---------------------------------------------------------------------------
    def make_gi(self, dev: DevState, prof: mig.Profile, start: int) -> GiState:
        assert dev.model is not None
        try:
            mig.check_place(dev.model, dev.placed(), prof, start)
        except InsufficientResourcesError:
            raise d.NVMLError(d.NVML_ERROR_INSUFFICIENT_RESOURCES) from None
        gi_id = next(i for i in range(1, 64) if i not in dev.gis)
        gi = dev.gis[gi_id] = GiState(gi_id, prof, start)
        self._handles[ctypes.addressof(gi.node)] = ("gi", (dev, gi))
        return gi

    def make_ci(self, dev: DevState, gi: GiState, slices: int) -> CiState:
        slot = dev.slots.index(None)
        self._made += 1
        mig_uuid = f"MIG-{uuidlib.uuid5(_NS, f'{self._seed}/{dev.index}/{self._made}')}"
        profile = next(k for k, v in CI_SLICES.items() if v == slices)
        ci = CiState(next(i for i in range(8) if i not in gi.cis), profile, slices, mig_uuid, slot)
        gi.cis[ci.id] = ci
        dev.slots[slot] = ci
        self._handles[ctypes.addressof(ci.node)] = ("ci", (dev, gi, ci))
        self._handles[ctypes.addressof(ci.mig_node)] = ("mig", (gi, ci))
        return ci

    def drop_ci(self, dev: DevState, gi: GiState, ci: CiState) -> None:
        del gi.cis[ci.id]
        dev.slots[ci.slot] = None
        del self._handles[ctypes.addressof(ci.node)]
        del self._handles[ctypes.addressof(ci.mig_node)]

    def drop_gi(self, dev: DevState, gi: GiState) -> None:
        del dev.gis[gi.id]
        del self._handles[ctypes.addressof(gi.node)]

    # Handles ---------------------------------------------------------------------------
    def resolve(self, handle: Any, pointer_type: Any) -> tuple[str, Any]:
        if not isinstance(handle, pointer_type):
            raise TypeError(f"expected a {pointer_type.__name__} handle, got {handle!r}")
        found = self._handles.get(ctypes.addressof(handle.contents))
        if found is None:  # destroyed, or never made: a stale handle
            invalid()
        return found

    def dev(self, handle: Any) -> DevState:
        kind, obj = self.resolve(handle, d.c_nvmlDevice_t)
        return obj if kind == "device" else invalid()

    def mig_dev(self, handle: Any) -> Any:
        """A device in MIG mode (NOT_SUPPORTED otherwise, as for MIG calls on a real one)."""
        dev = self.dev(handle)
        if dev.model is None or not dev.current:
            raise d.NVMLError(d.NVML_ERROR_NOT_SUPPORTED)
        return dev

    def mig_device(self, handle: Any) -> tuple[GiState, CiState]:
        kind, obj = self.resolve(handle, d.c_nvmlDevice_t)
        return obj if kind == "mig" else invalid()

    def gi(self, handle: Any) -> tuple[DevState, GiState]:
        kind, obj = self.resolve(handle, d.c_nvmlGpuInstance_t)
        return obj if kind == "gi" else invalid()

    def ci(self, handle: Any) -> tuple[DevState, GiState, CiState]:
        kind, obj = self.resolve(handle, d.c_nvmlComputeInstance_t)
        return obj if kind == "ci" else invalid()

    def profile(self, dev: DevState, profile_id: int, error: int) -> mig.Profile:
        if dev.model is None:
            raise d.NVMLError(d.NVML_ERROR_NOT_SUPPORTED)
        found = next((p for p in dev.model.profiles if p.id == profile_id), None)
        if found is None:
            raise d.NVMLError(error)
        return found

    def _new_dev(self, index: int, spec: FakeGpu) -> DevState:
        try:
            model: mig.GpuModel | None = mig.gpu_model(spec.model)
        except NotSupportedError:
            model = None
        name = f"NVIDIA {model.nvml_names[0] if model else spec.model}"
        pending = spec.mig_current if spec.mig_pending is None else spec.mig_pending
        gpu_uuid = f"GPU-{uuidlib.uuid5(_NS, f'{self._seed}/gpu/{index}')}"
        memory_mb = model.memory_mb if model else 16384
        dev = DevState(index, name, gpu_uuid, model, memory_mb, spec.mig_current, pending)
        self._handles[ctypes.addressof(dev.node)] = ("device", dev)
        return dev


def invalid() -> NoReturn:
    raise d.NVMLError(d.NVML_ERROR_INVALID_ARGUMENT)


def mode_value(on: bool) -> int:
    return d.NVML_DEVICE_MIG_ENABLE if on else d.NVML_DEVICE_MIG_DISABLE


def deref(ref: Any, ctype: Any) -> Any:
    """The object behind ``byref(obj)`` or ``pointer(obj)``; TypeError for anything else."""
    if type(ref).__name__ == "CArgObject":
        obj = ref._obj
    elif isinstance(ref, ctypes._Pointer):
        obj = ref.contents
    else:
        raise TypeError(
            f"expected byref({ctype.__name__}) (pynvml declares no argtypes), got {ref!r}"
        )
    if not isinstance(obj, ctype):
        raise TypeError(f"expected byref({ctype.__name__}), got byref({type(obj).__name__})")
    return obj


def array_of(ref: Any, element: Any) -> Any:
    """``ref`` if it is a ctypes array of ``element`` (what NVML fills); TypeError otherwise."""
    if not isinstance(ref, ctypes.Array) or ref._type_ is not element:
        raise TypeError(f"expected an array of {element.__name__}, got {ref!r}")
    return ref
