"""``migserve gpu inspect``: the report against the fake pynvml, and the CLI wiring here."""

from __future__ import annotations

import json

import pytest
from fakes import pynvml_defs as defs
from fakes.fake_pynvml import FakeGpu, FakePynvml
from migserve_agent.gpu import inspect as gpu_inspect
from migserve_agent.gpu.nvml import NvmlGpuBackend, NvmlUnavailableError
from migserve_cli.__main__ import main as cli_main


def _fake() -> FakePynvml:
    fake = FakePynvml(
        [FakeGpu("A100-SXM4-40GB"), FakeGpu("H100-80GB", mig_current=False), FakeGpu("Tesla T4")]
    )
    fake.external_slice(0, "3g.20gb", 0)
    fake.external_slice(0, "1g.10gb", 4)
    return fake


def _nvml_works_here() -> bool:
    try:
        NvmlGpuBackend().close()
    except NvmlUnavailableError:
        return False
    return True


def test_text_report() -> None:
    fake = _fake()
    text = gpu_inspect.render_text(gpu_inspect.inspect_node(nvml=fake))
    lines = text.splitlines()
    assert lines[0].startswith("GPU 0: NVIDIA A100-SXM4-40GB  GPU-") and "40960 MB" in lines[0]
    assert "  MIG mode: enabled (current enabled, pending enabled)" in lines
    header = next(line for line in lines if "NVML index" in line).split()
    assert header[:4] == ["profile", "id", "NVML", "index"]
    row = next(line for line in lines if line.strip().startswith("1g.10gb ")).split()
    # name, id, index (constant), compute, memory slices, max, fit now, MB, SMs, starts
    assert row == [
        "1g.10gb",
        "15",
        "9",
        "(1_SLICE_REV2)",
        "1",
        "2",
        "4",
        "1",
        "9984",
        "14",
        "0",
        "2",
        "4",
        "6",
    ]
    uuids = [s for s in text.split() if s.startswith("MIG-")]
    assert len(uuids) == 2
    assert any(line.strip().startswith("1   0   3g.20gb  0") for line in lines)
    assert (
        "  memory slices: [3g.20gb                        |1g.10gb        |·      |·      ]"
        in lines
    )
    assert "GPU 1: NVIDIA H100 80GB (H100-80GB)" in text
    assert "MIG mode: OFF (current disabled, pending disabled)" in text
    assert "`sudo nvidia-smi -i 1 -mig 1`" in text and "never changes MIG mode" in text
    assert "GPU 2: NVIDIA Tesla T4" in text and "MIG mode: not supported by this GPU" in text
    assert fake.mutating_calls() == []
    assert fake.calls.count("nvmlShutdown") == 1


def test_json_report() -> None:
    fake = _fake()
    data = json.loads(gpu_inspect.to_json(gpu_inspect.inspect_node(nvml=fake)))
    a100, h100, t4 = data["gpus"]
    assert (a100["model"], a100["mig_enabled"], a100["enable_hint"]) == (
        "A100-SXM4-40GB",
        True,
        None,
    )
    prof = next(p for p in a100["profiles"] if p["name"] == "1g.10gb")
    assert prof == {
        "index": 9,
        "index_name": "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2",
        "id": 15,
        "name": "1g.10gb",
        "nvml_name": "MIG 1g.10gb",
        "compute_slices": 1,
        "memory_slices": 2,
        "max_count": 4,
        "memory_mb": 9984,
        "sm_count": 14,
        "starts": [0, 2, 4, 6],
        "remaining": 1,
    }
    assert [(s["profile"], s["start"], s["uuid"][:4]) for s in a100["instances"]] == [
        ("3g.20gb", 0, "MIG-"),
        ("1g.10gb", 4, "MIG-"),
    ]
    assert [d["gi_id"] for d in a100["mig_devices"]] == [1, 2]
    assert (h100["mig_current"], h100["mig_pending"], h100["profiles"]) == (False, False, [])
    assert "sudo nvidia-smi -i 1 -mig 1" in h100["enable_hint"]
    assert (t4["mig_supported"], t4["enable_hint"]) == (False, None)
    assert fake.mutating_calls() == []


def test_one_gpu_by_index() -> None:
    reports = gpu_inspect.inspect_node(nvml=_fake(), index=1)
    assert [r.index for r in reports] == [1]


def test_without_root_it_shows_what_nvml_tells() -> None:
    fake = FakePynvml(privileged=False)
    fake.external_slice(0, "2g.10gb", 0)
    (report,) = gpu_inspect.inspect_node(nvml=fake)
    assert report.instances is None and report.profiles
    assert all(p.starts is None and p.remaining is None for p in report.profiles)
    text = gpu_inspect.render_text([report])
    assert "GPU instances are listed only for root" in text
    assert "MIG devices:" in text and report.mig_devices[0].uuid in text
    assert fake.mutating_calls() == []


def test_no_driver_is_a_clear_error_with_the_fake() -> None:
    with pytest.raises(NvmlUnavailableError, match="NVML is not available: Driver Not Loaded"):
        gpu_inspect.inspect_node(nvml=FakePynvml(init_error=defs.NVML_ERROR_DRIVER_NOT_LOADED))


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main(["gpu", "inspect", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--index" in out and "It only reads" in out
    with pytest.raises(SystemExit):
        cli_main(["gpu", "--help"])
    assert "inspect" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["gpu", "inspect"], ["gpu", "inspect", "--json"]])
def test_cli_without_an_nvidia_driver(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    if _nvml_works_here():
        pytest.skip("this machine has a working NVIDIA driver")
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("migserve: error: NVML is not available: ")
    assert "Traceback" not in captured.err
