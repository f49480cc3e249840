"""The TGI engine adapter, and TGI's own answers (tests/fixtures/tgi) through the bridge
and the metrics watcher. tests/fixtures/tgi/SOURCES.md says where each answer comes from."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from migserve_agent.bridge.errors import EngineRejectedError
from migserve_agent.bridge.sse import DONE, Finish, StreamEvent, Usage
from migserve_agent.engines.base import EngineArgsError
from migserve_agent.engines.registry import default_registry
from migserve_agent.engines.tgi import TgiEngineAdapter
from migserve_shared import mig
from migserve_shared.messages import InferenceJob, ModelSpec, SamplingParams
from migserve_watcher.adapters.exposition import ENGINE_SERIES, parse_sample
from openai.types.chat import ChatCompletionChunk
from test_engine_support import chat_job, stream_recording
from text_generation.types import ChatRequest, StreamResponse

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tgi"
A100 = mig.gpu_model("A100-SXM4-40GB")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def spec(**engine_args: str) -> ModelSpec:
    return ModelSpec(
        model_id=MODEL, engine="tgi", memory_mb=4000, tpot_slo_ms=50, engine_args=engine_args
    )


def test_launch_is_one_shard_on_the_slice_with_slots_as_the_concurrency_limit() -> None:
    adapter = TgiEngineAdapter()
    profile = A100.profile("3g.20gb")
    slots = adapter.slots(spec(), profile)
    launch = adapter.launch(spec=spec(), profile=profile, host="0.0.0.0", port=8000, slots=slots)
    assert slots == 24  # 8 per compute slice
    assert launch.argv == (
        "text-generation-launcher",
        "--model-id", MODEL,
        "--hostname", "0.0.0.0",
        "--port", "8000",
        "--num-shard", "1",
        "--max-concurrent-requests", "24",
        "--shard-uds-path", "/tmp/migserve-tgi-8000",
        "--usage-stats", "off",
    )  # fmt: skip
    assert launch.health_path == "/health"
    assert launch.chat_route == "/v1/chat/completions"
    assert "CUDA_VISIBLE_DEVICES" not in launch.env  # the runtime sets the slice


def test_engine_args_become_checked_flags() -> None:
    adapter = TgiEngineAdapter(launcher="/opt/tgi/launcher")
    model = ModelSpec(
        model_id="org/m",
        engine="tgi",
        memory_mb=1,
        tpot_slo_ms=1,
        source="/models/m",
        engine_args={
            "Max_Concurrent_Requests": "3",
            "quantize": "awq",
            "max-total-tokens": "4096",
            "trust_remote_code": "true",
            "cuda_memory_fraction": "0.9",
        },
    )
    profile = A100.profile("1g.5gb")
    assert adapter.slots(model, profile) == 3
    argv = adapter.launch(spec=model, profile=profile, host="127.0.0.1", port=9, slots=3).argv
    assert argv[:3] == ("/opt/tgi/launcher", "--model-id", "/models/m")
    assert argv[argv.index("--max-concurrent-requests") + 1] == "3"
    assert argv.count("--max-concurrent-requests") == 1
    assert argv[-7:] == (
        "--cuda-memory-fraction", "0.9",
        "--max-total-tokens", "4096",
        "--quantize", "awq",
        "--trust-remote-code",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"api_key": "x"}, "'api_key' is not a TGI setting"),
        ({"quantize": "int3"}, "quantize='int3' is invalid: must be one of"),
        ({"cuda_memory_fraction": "1.5"}, "must be a number in (0, 1]"),
        ({"max_total_tokens": "-1"}, "must be an integer >= 1"),
        ({"trust_remote_code": "maybe"}, "must be true or false"),
        ({"revision": "main; rm -rf /"}, "must be 1-128 characters"),
        ({"slots": "4", "max_concurrent_requests": "5"}, "disagree"),
        ({"dtype": "float16", "DTYPE": "bfloat16"}, "sets 'dtype' twice"),
    ],
)
def test_bad_engine_args_are_refused_with_the_key(args: dict[str, str], message: str) -> None:
    with pytest.raises(EngineArgsError, match="model meta-llama") as err:
        TgiEngineAdapter().slots(spec(**args), A100.profile("1g.5gb"))
    assert message in str(err.value)


def test_the_agent_offers_tgi_and_vllm() -> None:
    registry = default_registry(sim_startup_s=0)
    assert {"tgi", "vllm"} <= set(registry.kinds())
    assert registry.get("tgi").kind == "tgi"


# The bridge against TGI's recorded answers ----------------------------------------------
def job(**params: object) -> InferenceJob:
    return chat_job(MODEL, "Say OK!", SamplingParams(**params))  # type: ignore[arg-type]


async def stream_fixture(
    name: str, the_job: InferenceJob, requests: list[httpx.Request]
) -> list[StreamEvent]:
    """Stream a fixture through the bridge's engine client, 7 bytes at a time."""
    body = (FIXTURES / name).read_bytes()
    return await stream_recording(body, the_job, requests, engine="tgi", size=7)


async def test_a_tgi_chat_stream_with_usage_is_read_to_the_end() -> None:
    requests: list[httpx.Request] = []
    events = await stream_fixture("chat_stream_usage.sse", job(top_p=1.0, seed=7), requests)
    assert events == ["OK", "!", Finish("stop"), Usage(39, 3), DONE]
    (request,) = requests
    assert request.url.path == "/v1/chat/completions"
    body = json.loads(request.content)
    assert "top_p" not in body  # TGI refuses top_p >= 1
    assert body["stream_options"] == {"include_usage": True}
    # the body is a chat request as TGI's own client models it
    ChatRequest.model_validate(body)


async def test_a_tgi_stream_stopped_by_max_tokens_with_a_keep_alive() -> None:
    events = await stream_fixture("chat_stream_length.sse", job(max_tokens=10), [])
    tokens = [e for e in events if isinstance(e, str)]
    assert "".join(tokens) == "**Deep Learning: An Overview**\n" + "=" * 37 + "\n\n"
    assert len(tokens) == 10
    assert events[-3:] == [Finish("length"), Usage(40, 10), DONE]


async def test_an_error_inside_a_tgi_stream_fails_the_job() -> None:
    with pytest.raises(EngineRejectedError, match="CUDA out of memory"):
        await stream_fixture("chat_stream_error.sse", job(), [])


@pytest.mark.parametrize("name", ["chat_stream_usage.sse", "chat_stream_length.sse"])
def test_tgi_chat_chunks_are_what_the_openai_client_reads(name: str) -> None:
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("data:{"):
            ChatCompletionChunk.model_validate_json(line.removeprefix("data:"))


def test_the_native_generate_stream_event_is_tgis_stream_response() -> None:
    (line,) = [ln for ln in (FIXTURES / "generate_stream_last.sse").read_text().splitlines() if ln]
    event = StreamResponse.model_validate_json(line.removeprefix("data:"))
    assert event.token.text == "."
    assert event.generated_text is not None and event.generated_text.endswith("space suit.")


# The metrics watcher against TGI's exposition -------------------------------------------
def test_the_watcher_reads_tpot_queue_and_batch_from_tgi_metrics() -> None:
    sample = parse_sample((FIXTURES / "metrics.prom").read_text(), ENGINE_SERIES["tgi"], at=1.0)
    assert sample.latency_sum_s == pytest.approx(0.2842)
    assert sample.latency_count == 12
    assert sample.tokens == 670
    assert sample.requests == 12  # tgi_request_success, not tgi_request_count
    assert sample.in_flight == 1
    assert sample.waiting == 0
