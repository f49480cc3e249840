"""The agent with the NVML backend: choosing it, and refusing GPUs whose MIG mode is off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.fake_pynvml import FakeGpu, FakePynvml
from migserve_agent.__main__ import serve
from migserve_agent.agent import build_gpu_backend
from migserve_agent.gpu.base import GpuInfo
from migserve_agent.gpu.mig_mode import MigModeOffError, require_mig_enabled
from migserve_agent.gpu.nvml import NvmlGpuBackend, NvmlUnavailableError
from migserve_agent.settings import settings_from_env
from migserve_shared.errors import ConfigError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"MIGSERVE_NODE": "n1", "MIGSERVE_STATE_DIR": str(tmp_path / "state"), **extra}


def _nvml_works_here() -> bool:
    try:
        NvmlGpuBackend().close()
    except NvmlUnavailableError:
        return False
    return True


def test_settings_choose_the_nvml_backend(tmp_path: Path) -> None:
    settings = settings_from_env(
        _env(tmp_path, MIGSERVE_GPU_BACKEND="nvml", MIGSERVE_NVML_GPUS="0,2")
    )
    assert (settings.gpu_backend, settings.nvml_gpus) == ("nvml", (0, 2))
    assert settings_from_env(_env(tmp_path)).nvml_gpus is None
    with pytest.raises(ConfigError, match="MIGSERVE_NVML_GPUS='0,x'"):
        settings_from_env(_env(tmp_path, MIGSERVE_NVML_GPUS="0,x"))
    with pytest.raises(ConfigError, match="MIGSERVE_GPU_BACKEND='cuda'"):
        settings_from_env(_env(tmp_path, MIGSERVE_GPU_BACKEND="cuda"))


def test_the_nvml_backend_without_a_driver(tmp_path: Path) -> None:
    if _nvml_works_here():
        pytest.skip("this machine has a working NVIDIA driver")
    settings = settings_from_env(_env(tmp_path, MIGSERVE_GPU_BACKEND="nvml"))
    with pytest.raises(NvmlUnavailableError, match="NVML is not available: "):
        build_gpu_backend(settings)


def test_mig_off_message_says_how_to_enable_it() -> None:
    on = GpuInfo(
        index=0, uuid="GPU-a", name="NVIDIA A100-SXM4-40GB", mig_enabled=True, memory_mb=40960
    )
    off = GpuInfo(
        index=1,
        uuid="GPU-b",
        name="NVIDIA A100-SXM4-40GB",
        mig_enabled=False,
        memory_mb=40960,
        mig_mode="current enabled, pending disabled",
    )
    require_mig_enabled([on])
    with pytest.raises(MigModeOffError) as info:
        require_mig_enabled([on, off])
    text = str(info.value)
    assert "GPU 1 (NVIDIA A100-SXM4-40GB, GPU-b) has MIG mode off" in text
    assert "current enabled, pending disabled" in text
    assert "`sudo nvidia-smi -i 1 -mig 1`" in text and "`sudo nvidia-smi -i 1 -r`" in text
    assert "never changes MIG mode" in text and "GPU 0" not in text


async def test_the_agent_refuses_a_gpu_with_mig_off_before_nats(tmp_path: Path) -> None:
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB"), FakeGpu("H100-80GB", mig_pending=False)])
    settings = settings_from_env(
        _env(tmp_path, MIGSERVE_GPU_BACKEND="nvml", MIGSERVE_NATS_URL="nats://127.0.0.1:9")
    )
    backend = NvmlGpuBackend(nvml=fake, process_finder=lambda uuid: [])
    with pytest.raises(MigModeOffError, match=r"GPU 1 .*sudo nvidia-smi -i 1 -mig 1"):
        await serve(settings, backend=backend)
    assert fake.mutating_calls() == []  # never nvmlDeviceSetMigMode, nor any slice
    assert fake.calls[-1] == "nvmlShutdown"


def test_the_agent_process_exits_with_a_clear_log_line(tmp_path: Path) -> None:
    if _nvml_works_here():
        pytest.skip("this machine has a working NVIDIA driver")
    env = {
        **os.environ,
        **_env(tmp_path, MIGSERVE_GPU_BACKEND="nvml", MIGSERVE_LOG_FORMAT="text"),
        "MIGSERVE_NATS_URL": "nats://127.0.0.1:9",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "migserve_agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert "refusing to start: NVML is not available: " in proc.stderr
    assert "Traceback" not in proc.stderr
