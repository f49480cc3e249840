"""The ``vllm`` engine adapter: vLLM's OpenAI-compatible server on one slice.

Launch::

    vllm serve M --host H --port P --served-model-name MODEL_ID
        --gpu-memory-utilization F --max-num-seqs SLOTS [flags from engine_args]

* ``--served-model-name`` is the model id, so the ``model`` field the bridge
  sends (the job's model id) is the name vLLM answers to, whatever path or hub
  id ``M`` (``ModelSpec.source``) the weights come from.
* ``--max-num-seqs`` is the slot count: vLLM never runs more sequences at once
  than the bridge hands it.
* ``--gpu-memory-utilization`` is the share of the slice's memory vLLM takes
  for weights and KV cache (the slice is the engine's alone; default 0.9).
* ``VLLM_NO_USAGE_STATS=1``: vLLM otherwise reports usage statistics.

The slice. In a container (the ``kubernetes`` runtime) the slice is passed as
``NVIDIA_VISIBLE_DEVICES=MIG-<uuid>`` and the container sees it as device 0;
that is the way vLLM runs on MIG. vLLM crashes at start when
``CUDA_VISIBLE_DEVICES`` holds a MIG UUID (``ValueError: invalid literal for
int()`` in ``device_id_to_physical_device_id``; vLLM issues 41848, 17047,
20939, fix proposed in pull request 46132), which is how the ``process``
runtime pins a process to a slice. migserve does not work around that by
leaving ``CUDA_VISIBLE_DEVICES`` unset: a bare-metal process would then see
the whole GPU and its other tenants' slices. So with the ``process`` runtime
on a real GPU a vLLM instance fails closed (``instance.failed`` with vLLM's
error in the log tail) until vLLM accepts UUIDs; use the ``kubernetes``
runtime, or TGI or llama.cpp, for real MIG slices on bare metal.

HTTP (one port): ``GET /health`` answers 200 once the engine serves (the port
is closed while the model loads, 503 when the engine died); OpenAI
``POST /v1/chat/completions`` and ``/v1/completions`` stream ``data: {json}``
events ending with ``data: [DONE]`` (the bridge's ``OpenAIDialect``);
``GET /metrics`` is Prometheus text.

Which series mean TPOT, queue and running (``vllm:inter_token_latency_seconds``
since 0.11, ``vllm:time_per_output_token_seconds`` before;
``vllm:num_requests_waiting``, ``vllm:num_requests_running``) is defined once,
for the metrics watcher: ``migserve_watcher.adapters.exposition.VLLM``.
tests/fixtures/vllm holds real vLLM responses and expositions, with sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from migserve_shared.messages import EngineKind, ModelSpec
from migserve_shared.mig import Profile

from migserve_agent.engines import cli_args
from migserve_agent.engines.base import EngineLaunch
from migserve_agent.engines.cli_args import SWITCH, Flag

#: engine_args a model may set (``vllm serve`` flags), besides ``slots``
VLLM_FLAGS: Final[dict[str, Flag]] = {
    "gpu-memory-utilization": Flag(cli_args.fraction),
    "max-num-seqs": Flag(cli_args.positive_int),
    "max-model-len": Flag(cli_args.positive_int),
    "max-num-batched-tokens": Flag(cli_args.positive_int),
    "dtype": Flag(cli_args.one_of("auto", "half", "float16", "bfloat16", "float", "float32")),
    "quantization": Flag(cli_args.token),
    "kv-cache-dtype": Flag(cli_args.token),
    "revision": Flag(cli_args.token),
    "enforce-eager": SWITCH,
    "enable-prefix-caching": SWITCH,
    "trust-remote-code": SWITCH,
}


def _args(spec: ModelSpec) -> tuple[int | None, dict[str, str]]:
    return cli_args.split_slots(spec, VLLM_FLAGS, engine="vLLM", slots_flag="max-num-seqs")


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmEngineAdapter:
    """Launches ``vllm serve`` for one model on one slice."""

    executable: str = "vllm"
    gpu_memory_utilization: float = 0.9
    #: concurrent sequences per compute slice, unless engine_args set ``slots``
    slots_per_compute: int = 8
    kind: EngineKind = "vllm"

    def slots(self, spec: ModelSpec, profile: Profile) -> int:
        explicit, _ = _args(spec)
        return explicit if explicit is not None else self.slots_per_compute * profile.compute_slices

    def launch(
        self, *, spec: ModelSpec, profile: Profile, host: str, port: int, slots: int
    ) -> EngineLaunch:
        _, args = _args(spec)
        args.setdefault("gpu-memory-utilization", str(self.gpu_memory_utilization))
        argv = [
            self.executable, "serve", spec.source or spec.model_id,
            "--host", host,
            "--port", str(port),
            "--served-model-name", spec.model_id,
            "--max-num-seqs", str(slots),
            *cli_args.to_argv(args, VLLM_FLAGS),
        ]  # fmt: skip
        return EngineLaunch(
            argv=tuple(argv), env={"VLLM_NO_USAGE_STATS": "1"}, health_path="/health"
        )
