"""The ``tgi`` engine adapter: Hugging Face text-generation-inference on one slice.

Launch (one process, one slice)::

    text-generation-launcher --model-id M --hostname H --port P --num-shard 1
        --max-concurrent-requests SLOTS --shard-uds-path /tmp/migserve-tgi-P
        --usage-stats off [flags from the model's engine_args]

* ``--num-shard 1``: the launcher otherwise counts the visible devices; one
  MIG slice is one device and slices cannot shard across each other (no P2P).
* ``--max-concurrent-requests`` is the slot count: the bridge never holds more
  jobs than slots, and TGI answers 429 beyond it, so the two agree.
* ``--shard-uds-path`` is per port, so two TGI instances on one host (the
  process runtime) do not share the shard sockets (default
  ``/tmp/text-generation-server-<rank>``).
* ``--usage-stats off``: TGI otherwise reports usage to Hugging Face.

The slice comes from the runtime: ``CUDA_VISIBLE_DEVICES=MIG-<uuid>`` for a
process, ``NVIDIA_VISIBLE_DEVICES=MIG-<uuid>`` in a container.

HTTP (one port): ``GET /health`` answers 200 once the router serves and a
health generation succeeds, 503 while the shards are unhealthy (connection
refused before the router is up); OpenAI ``POST /v1/chat/completions`` and
``/v1/completions`` stream ``data:{json}`` events ending with ``data:[DONE]``
(the bridge's ``OpenAIDialect``, which drops ``top_p >= 1`` for TGI); native
``POST /generate_stream`` streams ``data:{"token":...}`` events without
``[DONE]``; ``GET /metrics`` is Prometheus text.

Which series mean TPOT, queue and running is defined once, for the metrics
watcher: ``migserve_watcher.adapters.exposition.TGI``
(``tgi_request_mean_time_per_token_duration``, ``tgi_queue_size``,
``tgi_batch_current_size``). tests/fixtures/tgi holds real TGI responses and
the exposition its router writes, with their sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from migserve_shared.messages import EngineKind, ModelSpec
from migserve_shared.mig import Profile

from migserve_agent.engines import cli_args
from migserve_agent.engines.base import EngineLaunch
from migserve_agent.engines.cli_args import SWITCH, Flag

#: engine_args a model may set (TGI launcher flags), besides ``slots``
TGI_FLAGS: Final[dict[str, Flag]] = {
    "max-concurrent-requests": Flag(cli_args.positive_int),
    "max-input-tokens": Flag(cli_args.positive_int),
    "max-total-tokens": Flag(cli_args.positive_int),
    "max-batch-prefill-tokens": Flag(cli_args.positive_int),
    "max-batch-total-tokens": Flag(cli_args.positive_int),
    "max-stop-sequences": Flag(cli_args.positive_int),
    "cuda-memory-fraction": Flag(cli_args.fraction),
    "quantize": Flag(
        cli_args.one_of(
            "awq",
            "compressed-tensors",
            "eetq",
            "exl2",
            "gptq",
            "marlin",
            "bitsandbytes",
            "bitsandbytes-nf4",
            "bitsandbytes-fp4",
            "fp8",
        )
    ),
    "dtype": Flag(cli_args.one_of("float16", "bfloat16")),
    "kv-cache-dtype": Flag(cli_args.one_of("fp8_e4m3fn", "fp8_e5m2")),
    "revision": Flag(cli_args.token),
    "trust-remote-code": SWITCH,
}


def _args(spec: ModelSpec) -> tuple[int | None, dict[str, str]]:
    return cli_args.split_slots(spec, TGI_FLAGS, engine="TGI", slots_flag="max-concurrent-requests")


@dataclass(frozen=True, slots=True, kw_only=True)
class TgiEngineAdapter:
    """Launches ``text-generation-launcher`` for one model on one slice."""

    launcher: str = "text-generation-launcher"
    #: concurrent requests per compute slice, unless engine_args set ``slots``
    slots_per_compute: int = 8
    kind: EngineKind = "tgi"

    def slots(self, spec: ModelSpec, profile: Profile) -> int:
        explicit, _ = _args(spec)
        return explicit if explicit is not None else self.slots_per_compute * profile.compute_slices

    def launch(
        self, *, spec: ModelSpec, profile: Profile, host: str, port: int, slots: int
    ) -> EngineLaunch:
        _, args = _args(spec)
        argv = [
            self.launcher,
            "--model-id", spec.source or spec.model_id,
            "--hostname", host,
            "--port", str(port),
            "--num-shard", "1",
            "--max-concurrent-requests", str(slots),
            "--shard-uds-path", f"/tmp/migserve-tgi-{port}",
            "--usage-stats", "off",
            *cli_args.to_argv(args, TGI_FLAGS),
        ]  # fmt: skip
        return EngineLaunch(argv=tuple(argv), health_path="/health")
