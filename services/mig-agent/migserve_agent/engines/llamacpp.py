"""The ``llamacpp`` engine adapter: llama.cpp's ``llama-server`` on one slice.

The command (flags checked against ``llama-server --help`` of the pinned build)::

    llama-server -m <gguf> --host H --port P --metrics --no-webui
        -a <model id> -np SLOTS -c CTX -t THREADS --cache-ram MIB

``-a`` makes ``/v1/models`` list the model id. Health is ``GET /health``
(503 while loading, then 200 ``{"status":"ok"}``); chat is OpenAI
``/v1/chat/completions`` with SSE streaming, which sends a final usage chunk
when asked with ``stream_options.include_usage`` (the bridge's OpenAI dialect
does so unchanged). On a CUDA build the runtime's ``CUDA_VISIBLE_DEVICES``
picks the slice and llama-server offloads layers by itself (``-ngl auto``);
the CPU build ignores the variable.

How the slice profile sets the numbers (``engine_args`` override each):

- ``slots`` (parallel requests, ``-np``) = ``slots_per_compute`` (2) x compute
  slices: 1g -> 2, 2g -> 4, 3g -> 6, 4g -> 8, 7g -> 14.
- ``threads`` (CPU threads, ``-t``) = min(compute slices, CPU cores), so on a
  CPU-only node a bigger slice really computes faster and small slices do not
  fight over cores.
- context (``-c``, shared by the slots, each gets ``-c / -np``) =
  slots x ``ctx-per-slot`` (2048), unless the profile's memory holds less:
  KV budget = profile memory - GGUF file size - ``overhead_mib`` (256 MiB for
  compute buffers and the prompt cache); per-slot context = min(ctx-per-slot,
  KV budget / ``kv-kib-per-token`` (128 KiB, a conservative figure for 7-8B
  models with grouped-query attention; SmolLM2-135M needs 23) / slots),
  rounded down to a multiple of 256. Below 512 tokens per slot the launch is
  refused (InsufficientResourcesError).
- ``cache-ram`` (``--cache-ram``, MiB of host RAM for the prompt cache) = 256
  instead of llama.cpp's 8192, so many small instances fit one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from migserve_shared.errors import InsufficientResourcesError
from migserve_shared.messages import EngineKind, ModelSpec
from migserve_shared.mig import Profile

from migserve_agent.engines.base import EngineArgsError, EngineLaunch
from migserve_agent.engines.gguf_source import resolve_gguf
from migserve_agent.engines.llama_binary import require_llama_server

MIN_CTX_PER_SLOT: Final = 512
CTX_STEP: Final = 256
_MIB: Final = 1024 * 1024


#: integer engine_args ('-' or '_' in the key) and their smallest value
_INT_ARGS: Final[dict[str, int]] = {
    "slots": 1,
    "threads": 1,
    "ctx-per-slot": MIN_CTX_PER_SLOT,
    "kv-kib-per-token": 1,
    "cache-ram": 0,
}
_ALLOWED: Final = ", ".join(sorted([*_INT_ARGS, "gpu-layers"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaArgs:
    """A model's llamacpp engine_args, checked; None means "follow the profile"."""

    slots: int | None = None
    threads: int | None = None
    ctx_per_slot: int | None = None
    kv_kib_per_token: int | None = None
    cache_ram: int | None = None
    #: ``-ngl``: auto, all or a number of layers (CUDA builds)
    gpu_layers: str | None = None


def _checked(key: str, value: str) -> int | str:
    if key == "gpu-layers":
        if value not in ("auto", "all") and not value.isdigit():
            raise ValueError("must be auto, all or an integer >= 0")
        return value
    number = int(value)
    if number < _INT_ARGS[key]:
        raise ValueError(f"must be an integer >= {_INT_ARGS[key]}")
    return number


def engine_args(spec: ModelSpec) -> LlamaArgs:
    """The model's engine_args, normalized and checked; EngineArgsError names the bad one."""
    values: dict[str, Any] = {}
    for raw_key, raw_value in spec.engine_args.items():
        key = raw_key.strip().lower().replace("_", "-")
        if key not in _INT_ARGS and key != "gpu-layers":
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args key {raw_key!r} is not a llamacpp "
                f"setting (allowed: {_ALLOWED})"
            )
        try:
            values[key.replace("-", "_")] = _checked(key, raw_value.strip())
        except ValueError as exc:
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args {raw_key}={raw_value!r} is invalid: {exc}"
            ) from exc
    return LlamaArgs(**values)


def context_size(
    *,
    slots: int,
    ctx_per_slot: int,
    profile_memory_mib: int,
    weights_bytes: int,
    overhead_mib: int,
    kv_kib_per_token: int,
) -> int:
    """Total context (``-c``) for ``slots`` slots within the profile's memory (module doc)."""
    budget_kib = (profile_memory_mib - overhead_mib) * 1024 - weights_bytes // 1024
    fits_per_slot = max(0, budget_kib) // kv_kib_per_token // slots
    per_slot = min(ctx_per_slot, fits_per_slot // CTX_STEP * CTX_STEP)
    if per_slot < MIN_CTX_PER_SLOT:
        raise InsufficientResourcesError(
            f"{profile_memory_mib} MiB leaves room for {fits_per_slot} tokens of context per "
            f"slot for {slots} slots (weights {weights_bytes // _MIB} MiB, "
            f"{kv_kib_per_token} KiB per token); at least {MIN_CTX_PER_SLOT} are needed"
        )
    return slots * per_slot


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaCppAdapter:
    """Launches ``llama-server`` with slots, context and threads from the profile."""

    #: the llama-server binary; None when the node has none configured
    binary: Path | None
    #: CPU cores the node may give one engine (bounds ``-t``)
    cpu_count: int = 1
    slots_per_compute: int = 2
    ctx_per_slot: int = 2048
    kv_kib_per_token: int = 128
    overhead_mib: int = 256
    cache_ram_mib: int = 256
    kind: EngineKind = "llamacpp"

    def slots(self, spec: ModelSpec, profile: Profile) -> int:
        return engine_args(spec).slots or self.slots_per_compute * profile.compute_slices

    def threads(self, spec: ModelSpec, profile: Profile) -> int:
        return engine_args(spec).threads or max(1, min(profile.compute_slices, self.cpu_count))

    def launch(
        self, *, spec: ModelSpec, profile: Profile, host: str, port: int, slots: int
    ) -> EngineLaunch:
        args = engine_args(spec)
        binary = require_llama_server(self.binary)
        gguf = resolve_gguf(spec.source, model_id=spec.model_id)
        try:
            ctx = context_size(
                slots=slots,
                ctx_per_slot=args.ctx_per_slot or self.ctx_per_slot,
                profile_memory_mib=profile.memory_mb,
                weights_bytes=gguf.stat().st_size,
                overhead_mib=self.overhead_mib,
                kv_kib_per_token=args.kv_kib_per_token or self.kv_kib_per_token,
            )
        except InsufficientResourcesError as exc:
            raise InsufficientResourcesError(
                f"model {spec.model_id} on {profile.name}: {exc}"
            ) from exc
        cache_ram = self.cache_ram_mib if args.cache_ram is None else args.cache_ram
        argv = [
            str(binary),
            "-m", str(gguf),
            "--host", host,
            "--port", str(port),
            "--metrics",
            "--no-webui",
            "-a", spec.model_id,
            "-np", str(slots),
            "-c", str(ctx),
            "-t", str(self.threads(spec, profile)),
            "--cache-ram", str(cache_ram),
        ]  # fmt: skip
        if args.gpu_layers is not None:
            argv += ["-ngl", args.gpu_layers]
        return EngineLaunch(argv=tuple(argv))
