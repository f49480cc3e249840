"""The vLLM engine adapter, and vLLM's own answers (tests/fixtures/vllm) through the bridge
and the metrics watcher. tests/fixtures/vllm/SOURCES.md says where each answer comes from."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from migserve_agent.bridge.dialect import dialect_for
from migserve_agent.bridge.errors import EngineBrokeError
from migserve_agent.bridge.sse import DONE, Finish, StreamEvent, Usage
from migserve_agent.engines.base import EngineArgsError
from migserve_agent.engines.vllm import VllmEngineAdapter
from migserve_shared import mig
from migserve_shared.messages import ModelSpec, SamplingParams
from migserve_watcher.adapters.exposition import ENGINE_SERIES, parse_sample
from openai.types.chat import ChatCompletionChunk
from test_engine_support import chat_job, stream_recording

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vllm"
H100 = mig.gpu_model("H100-SXM5-80GB")
MODEL = "Qwen/Qwen2.5-3B-Instruct"


def spec(**engine_args: str) -> ModelSpec:
    return ModelSpec(
        model_id=MODEL, engine="vllm", memory_mb=9000, tpot_slo_ms=40, engine_args=engine_args
    )


def test_launch_serves_the_model_id_with_slots_as_max_num_seqs() -> None:
    adapter = VllmEngineAdapter()
    profile = H100.profile("2g.20gb")
    slots = adapter.slots(spec(), profile)
    launch = adapter.launch(spec=spec(), profile=profile, host="0.0.0.0", port=8000, slots=slots)
    assert slots == 16
    assert launch.argv == (
        "vllm", "serve", MODEL,
        "--host", "0.0.0.0",
        "--port", "8000",
        "--served-model-name", MODEL,
        "--max-num-seqs", "16",
        "--gpu-memory-utilization", "0.9",
    )  # fmt: skip
    assert launch.health_path == "/health"
    # the slice is the runtime's business: never CUDA_VISIBLE_DEVICES from the adapter
    assert launch.env == {"VLLM_NO_USAGE_STATS": "1"}


def test_weights_from_a_source_still_answer_to_the_model_id() -> None:
    model = ModelSpec(
        model_id="team/qwen:prod",
        engine="vllm",
        memory_mb=1,
        tpot_slo_ms=1,
        source="/models/qwen2.5-3b",
        engine_args={
            "max_num_seqs": "4",
            "gpu_memory_utilization": "0.85",
            "max-model-len": "8192",
            "enforce_eager": "yes",
            "enable_prefix_caching": "false",
        },
    )
    adapter = VllmEngineAdapter(executable="/venv/bin/vllm")
    profile = H100.profile("1g.10gb")
    assert adapter.slots(model, profile) == 4
    argv = adapter.launch(spec=model, profile=profile, host="::", port=18000, slots=4).argv
    assert argv[:3] == ("/venv/bin/vllm", "serve", "/models/qwen2.5-3b")
    assert argv[argv.index("--served-model-name") + 1] == "team/qwen:prod"
    assert argv.count("--max-num-seqs") == 1
    assert argv[-5:] == (
        "--enforce-eager",
        "--gpu-memory-utilization", "0.85",
        "--max-model-len", "8192",
    )  # fmt: skip
    assert "--enable-prefix-caching" not in argv


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"host": "0.0.0.0"}, "'host' is not a vLLM setting"),
        ({"tensor_parallel_size": "2"}, "'tensor_parallel_size' is not a vLLM setting"),
        ({"gpu_memory_utilization": "0"}, "must be a number in (0, 1]"),
        ({"dtype": "int4"}, "must be one of auto"),
        ({"max_num_seqs": "many"}, "invalid literal"),
        ({"slots": "8", "max_num_seqs": "16"}, "disagree"),
    ],
)
def test_bad_engine_args_are_refused_with_the_key(args: dict[str, str], message: str) -> None:
    with pytest.raises(EngineArgsError, match="model Qwen/") as err:
        VllmEngineAdapter().launch(
            spec=spec(**args), profile=H100.profile("1g.10gb"), host="h", port=1, slots=1
        )
    assert message in str(err.value)


# The bridge against vLLM's recorded answers ---------------------------------------------
async def stream_fixture(name: str, requests: list[httpx.Request]) -> list[StreamEvent]:
    body = (FIXTURES / name).read_bytes()
    the_job = chat_job(MODEL, "hi", SamplingParams(max_tokens=10, top_p=1.0, temperature=0.0))
    return await stream_recording(body, the_job, requests, engine="vllm", size=5)


async def test_a_vllm_chat_stream_ends_with_stop_and_done() -> None:
    requests: list[httpx.Request] = []
    events = await stream_fixture("chat_stream_stop.sse", requests)
    assert events == ["가", "요", "?", Finish("stop"), DONE]
    body = json.loads(requests[0].content)
    assert requests[0].url.path == "/v1/chat/completions"
    assert body["model"] == MODEL  # vLLM answers to --served-model-name
    assert body["top_p"] == 1.0  # vLLM, unlike TGI, takes top_p = 1
    assert body["temperature"] == 0.0


async def test_the_role_chunk_carries_no_token_and_a_cut_stream_is_an_error() -> None:
    with pytest.raises(EngineBrokeError, match="ended before the answer was complete"):
        await stream_fixture("chat_stream_start.sse", [])


async def test_continuous_usage_is_read_from_every_chunk() -> None:
    with pytest.raises(EngineBrokeError):  # the recording is cut mid-stream
        await stream_fixture("chat_stream_continuous_usage.sse", [])
    parser = dialect_for("vllm").new_parser()
    events = parser.feed((FIXTURES / "chat_stream_continuous_usage.sse").read_bytes())
    assert events[0::2] == ["target", '"', " model", " then"]
    assert events[-1] == Usage(16, 41)
    assert parser.malformed == 0


@pytest.mark.parametrize(
    "name", ["chat_stream_stop.sse", "chat_stream_start.sse", "chat_stream_continuous_usage.sse"]
)
def test_vllm_chunks_are_what_the_openai_client_reads(name: str) -> None:
    chunks = [
        line.removeprefix("data: ")
        for line in (FIXTURES / name).read_text().splitlines()
        if line.startswith("data: {")
    ]
    assert chunks
    for chunk in chunks:
        ChatCompletionChunk.model_validate_json(chunk)


# The metrics watcher against vLLM's exposition, new and old names -----------------------
@pytest.mark.parametrize("name", ["metrics_0.11.prom", "metrics_0.10.prom"])
def test_the_watcher_reads_tpot_queue_and_running_from_vllm_metrics(name: str) -> None:
    text = (FIXTURES / name).read_text()
    latency = "inter_token_latency" if name == "metrics_0.11.prom" else "time_per_output_token"
    assert f"vllm:{latency}_seconds_sum" in text
    sample = parse_sample(text, ENGINE_SERIES["vllm"], at=1.0)
    assert sample.latency_count == 480
    assert sample.latency_sum_s == pytest.approx(10.668)
    assert sample.tokens == 488
    assert sample.requests == 8  # request_success summed over finish reasons
    assert sample.in_flight == 3
    assert sample.waiting == 1
