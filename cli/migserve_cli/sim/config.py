"""What a simulation runs: the models (specs plus their size for the performance
model), the GPUs, and the timings of MIG and engine operations.

Slots per instance come from the agent's own engine adapters
(``migserve_agent.engines``: vLLM 8 per compute slice, the sim engine 4, ...),
and TPOT/TTFT from the sim engine's ``PerfModel`` with the model's
``weights_scale`` (its weights relative to the 7B reference), so a simulated
instance behaves like a production one on the same profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import msgspec
from migserve_agent.engines.registry import default_registry
from migserve_agent.sim_engine.perf import PerfModel
from migserve_shared import mig
from migserve_shared.errors import ConfigError, MigserveError
from migserve_shared.messages import ModelSpec

from migserve_cli.model_file import read_model_entries

DEFAULT_GPU_MODEL = "A100-SXM4-40GB"


@dataclass(frozen=True, slots=True)
class SimModel:
    """A model in the simulation: its registry spec and its size for the perf model."""

    spec: ModelSpec
    #: weights relative to the 7B reference of the perf model (3B is about 0.43)
    weights_scale: float = 1.0

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def slo_ms(self) -> float:
        return self.spec.tpot_slo_ms


#: The default catalogue (four models of different sizes; the trace is spread
#: over the first N). Memory is weights (bf16) plus KV-cache headroom.
_DEFAULT_MODELS: tuple[tuple[str, int, float, float], ...] = (
    # model id, memory MB, weights scale, TPOT SLO ms
    ("sim/llama-3.2-1b", 4_000, 0.18, 25.0),
    ("sim/qwen2.5-3b", 9_000, 0.43, 25.0),
    ("sim/qwen2.5-7b", 18_000, 1.0, 25.0),
    ("sim/qwen2.5-14b", 36_000, 2.0, 35.0),
)


def default_models(count: int = 4, *, slo_ms: float | None = None) -> list[SimModel]:
    """``count`` models from the default catalogue (cycled with a suffix beyond four)."""
    if count < 1:
        raise ConfigError(f"--models must be at least 1, got {count}")
    out: list[SimModel] = []
    for i in range(count):
        name, memory, scale, slo = _DEFAULT_MODELS[i % len(_DEFAULT_MODELS)]
        if i >= len(_DEFAULT_MODELS):
            name = f"{name}-{i // len(_DEFAULT_MODELS)}"
        spec = ModelSpec(
            model_id=name,
            engine="vllm",
            memory_mb=memory,
            tpot_slo_ms=slo_ms or slo,
            min_replicas=0,
            max_replicas=4,
        )
        out.append(SimModel(spec, scale))
    return out


def load_models_file(path: Path, *, slo_ms: float | None = None) -> list[SimModel]:
    """``models: [...]`` of ModelSpec fields plus an optional ``weights_scale`` each."""
    out: list[SimModel] = []
    for i, entry in enumerate(read_model_entries(path)):
        scale = entry.pop("weights_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ConfigError(f"{path}: models[{i}].weights_scale must be a number > 0")
        if slo_ms is not None:
            entry["tpot_slo_ms"] = slo_ms
        try:
            spec = msgspec.convert(entry, ModelSpec)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: models[{i}]: {exc}") from exc
        out.append(SimModel(spec, float(scale)))
    ids = [m.model_id for m in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: model ids must be unique, got {ids}")
    return out


def with_idle_to_zero(model: SimModel, seconds: float) -> SimModel:
    """The model with ``idle_to_zero_s`` set (scale to zero needs min_replicas 0)."""
    spec = msgspec.structs.replace(model.spec, idle_to_zero_s=seconds)
    return SimModel(spec, model.weights_scale)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """The cluster and the timings (seconds)."""

    gpus: int = 8
    gpus_per_node: int = 8
    gpu_model: str = DEFAULT_GPU_MODEL
    slice_create_s: float = 2.0
    slice_destroy_s: float = 1.0
    #: engine start on a fresh slice (vLLM-like restart ~60 s; a warm start ~1 s)
    engine_start_s: float = 60.0
    #: the watcher's scrape interval and sliding window
    watch_interval_s: float = 5.0
    watch_window_s: float = 30.0
    #: the watcher's SLO headroom (MIGSERVE_WATCHER_SLO_HEADROOM): violation above SLO x this
    slo_headroom: float = 0.9
    #: the scaler's tick interval
    tick_s: float = 1.0
    #: the gateway publishes demand at most this often per waiting model
    demand_interval_s: float = 2.0
    #: a request still waiting for a slot after this long fails (the gateway's hold timeout)
    queue_timeout_s: float = 120.0
    #: token-level attainment the hindsight search requires of a static partition
    target_attainment: float = 0.99
    #: static replicas per model of the whole-GPU baseline
    whole_gpu_replicas: int = 1
    #: HPA-like baseline: target in-flight requests per whole-GPU replica
    hpa_target_in_flight: float = 0.0
    hpa_sync_s: float = 15.0
    hpa_downscale_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus_per_node < 1:
            raise ConfigError("--gpus and --gpus-per-node must be at least 1")
        for name in ("slice_create_s", "slice_destroy_s", "engine_start_s", "queue_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0 seconds, got {value}")
        for name in ("watch_interval_s", "watch_window_s", "tick_s", "demand_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0 seconds, got {value}")
        if not 0 < self.slo_headroom <= 1:
            raise ConfigError(f"--headroom must be in (0, 1], got {self.slo_headroom}")
        if not 0 < self.target_attainment <= 1:
            raise ConfigError(f"target attainment must be in (0, 1], got {self.target_attainment}")
        try:
            mig.gpu_model(self.gpu_model)
        except MigserveError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def mig_model(self) -> mig.GpuModel:
        return mig.gpu_model(self.gpu_model)

    def node_of(self, gpu: int) -> tuple[str, int]:
        """(node name, GPU index on it) of the cluster-wide GPU number ``gpu``."""
        return f"sim-node-{gpu // self.gpus_per_node}", gpu % self.gpus_per_node


def slots_for(model: SimModel, profile: mig.Profile) -> int:
    """Concurrent requests an instance of ``model`` serves on ``profile``: the agent's rule."""
    registry = default_registry(sim_startup_s=0.0)
    try:
        return max(1, registry.get(model.spec.engine).slots(model.spec, profile))
    except MigserveError as exc:
        raise ConfigError(f"model {model.model_id}: {exc}") from exc


@cache
def _perf(compute: int, memory: int, weights_scale: float) -> PerfModel:
    return PerfModel.for_profile(compute, memory, weights_scale=weights_scale)


def perf_for(model: SimModel, profile: mig.Profile) -> PerfModel:
    """The sim engine's performance model of ``model`` on ``profile``."""
    return _perf(profile.compute_slices, profile.memory_slices, model.weights_scale)


def fitting_profiles(model: SimModel, gpu: mig.GpuModel) -> list[mig.Profile]:
    """Profiles of ``gpu`` (without +me) whose memory holds the model, smallest first."""
    return [p for p in gpu.by_size() if p.memory_mb >= model.spec.memory_mb]
