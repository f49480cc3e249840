"""The fake pynvml against the real one, and the NVML backend against both.

Every name the backend takes from the pynvml module exists in the installed
nvidia-ml-py and in the fake, with the same values, struct layouts, error
classes and parameter names; so the tests against the fake exercise the calls
a real GPU gets. Also: only gpu/nvml.py imports pynvml, nothing ever changes
MIG mode, and migserve's profile indices are NVML's constants.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
from pathlib import Path
from typing import Any

import pytest
from fakes import pynvml_defs as defs
from fakes.fake_pynvml import FakeGpu, FakePynvml
from migserve_shared import mig

pynvml: Any = pytest.importorskip("pynvml")

ROOT = Path(__file__).resolve().parents[2]
GPU_DIR = ROOT / "services/mig-agent/migserve_agent/gpu"
NVML_MODULES = (GPU_DIR / "nvml.py", GPU_DIR / "nvml_calls.py")


def _module_refs(tree: ast.AST) -> set[str]:
    """Attribute names read from the pynvml module object (``nv.X``, ``self._nv.X``...)."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        if (isinstance(base, ast.Name) and base.id == "nv") or (
            isinstance(base, ast.Attribute) and base.attr in ("nv", "_nv")
        ):
            names.add(node.attr)
    return names


USED = sorted(set().union(*(_module_refs(ast.parse(p.read_text())) for p in NVML_MODULES)))


def test_the_scan_finds_the_calls_of_the_documented_sequence() -> None:
    for name in (
        "nvmlDeviceGetGpuInstanceProfileInfo",
        "nvmlDeviceGetGpuInstancePossiblePlacements",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceGetComputeInstanceProfileInfo",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceDestroy",
        "NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED",
        "c_nvmlGpuInstancePlacement_t",
    ):
        assert name in USED


@pytest.mark.parametrize("name", USED)
def test_every_name_the_backend_uses_exists_in_pynvml_and_in_the_fake(name: str) -> None:
    real = getattr(pynvml, name)
    fake = getattr(FakePynvml, name)
    if isinstance(real, int):
        assert fake == real
    elif inspect.isfunction(real):
        real_params = list(inspect.signature(real).parameters)
        fake_params = list(inspect.signature(fake).parameters)[1:]  # without self
        assert fake_params == real_params


def test_constants_match_pynvml() -> None:
    consts = [n for n in dir(defs) if n.startswith("NVML") and n.isupper()]
    assert len(consts) > 40
    for name in consts:
        assert getattr(defs, name) == getattr(pynvml, name), name
    assert defs.nvmlGpuInstanceProfileInfo_v2 == pynvml.nvmlGpuInstanceProfileInfo_v2
    assert defs.nvmlComputeInstanceProfileInfo_v2 == pynvml.nvmlComputeInstanceProfileInfo_v2


def _layout(struct: Any) -> list[tuple[str, int]]:
    return [(name, ctypes.sizeof(kind)) for name, kind, *_ in getattr(struct, "_fields_", [])]


def test_struct_layouts_match_pynvml() -> None:
    structs = [n for n in dir(defs) if n.startswith(("c_nvml", "struct_c_nvml"))]
    assert "c_nvmlGpuInstanceProfileInfo_v2_t" in structs
    for name in structs:
        real, fake = getattr(pynvml, name), getattr(defs, name)
        assert _layout(fake) == _layout(real), name
        assert ctypes.sizeof(fake) == ctypes.sizeof(real), name


def test_error_classes_match_pynvml() -> None:
    classes = [n for n in dir(defs) if n.startswith("NVMLError_")]
    assert {"NVMLError_InUse", "NVMLError_InsufficientResources"} <= set(classes)
    for name in classes:
        assert getattr(defs, name)().value == getattr(pynvml, name)().value, name
        code = getattr(defs, name)().value
        assert type(defs.NVMLError(code)).__name__ == type(pynvml.NVMLError(code)).__name__


def test_profile_indices_in_the_mig_rules_are_nvml_constants() -> None:
    """1g.10gb on an A100-40GB is NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2 (9), profile id 15."""
    by_id = {
        19: pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE,
        20: pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1,
        15: pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2,
        14: pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE,
        9: pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE,
        5: pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE,
        0: pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE,
    }
    for model in mig.GPU_MODELS:
        assert {p.id: p.nvml_index for p in model.profiles} == by_id, model.name
    a100 = mig.gpu_model("A100-SXM4-40GB").profile("1g.10gb")
    assert (a100.nvml_index, a100.id) == (9, 15)


def test_only_gpu_nvml_imports_pynvml() -> None:
    importers = []
    for top in ("shared", "services", "cli"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import) and any(a.name == "pynvml" for a in node.names):
                    importers.append(path)
                if isinstance(node, ast.ImportFrom) and node.module == "pynvml":
                    importers.append(path)
    assert [p.relative_to(ROOT).as_posix() for p in importers] == [
        "services/mig-agent/migserve_agent/gpu/nvml.py"
    ]


def test_migserve_never_changes_mig_mode() -> None:
    for path in GPU_DIR.glob("*.py"):
        assert "SetMigMode" not in path.read_text(), path
    assert "nvmlDeviceSetMigMode" not in USED


def test_the_fake_wants_structs_and_counts_by_reference() -> None:
    """pynvml declares no argtypes: a struct passed by value would reach NVML by value."""
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB")])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    placement = defs.c_nvmlGpuInstancePlacement_t(start=0, size=8)
    with pytest.raises(TypeError, match="byref"):
        fake.nvmlDeviceCreateGpuInstanceWithPlacement(handle, 0, placement)
    with pytest.raises(TypeError, match="byref"):
        fake.nvmlDeviceGetGpuInstancePossiblePlacements(handle, 0, None, 3)
    count = ctypes.c_uint(0)
    fake.nvmlDeviceGetGpuInstancePossiblePlacements(handle, 0, None, ctypes.byref(count))
    assert count.value == 1
    gi = fake.nvmlDeviceCreateGpuInstanceWithPlacement(handle, 0, ctypes.byref(placement))
    assert fake.nvmlGpuInstanceGetInfo(gi).placement.size == 8


def test_the_fake_follows_nvml_semantics() -> None:
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB")])
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    info = fake.nvmlDeviceGetGpuInstanceProfileInfo(
        h, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2
    )
    assert (info.id, info.sliceCount, info.name) == (15, 1, "MIG 1g.10gb")
    with pytest.raises(defs.NVMLError_NotSupported):  # no 8-slice profile on an A100
        fake.nvmlDeviceGetGpuInstanceProfileInfo(h, pynvml.NVML_GPU_INSTANCE_PROFILE_8_SLICE)
    odd = defs.c_nvmlGpuInstancePlacement_t(start=1, size=2)  # 1g.10gb starts at even slices
    with pytest.raises(defs.NVMLError_InvalidArgument):
        fake.nvmlDeviceCreateGpuInstanceWithPlacement(h, 15, ctypes.byref(odd))
    whole = defs.c_nvmlGpuInstancePlacement_t(start=0, size=8)
    gi = fake.nvmlDeviceCreateGpuInstanceWithPlacement(h, 0, ctypes.byref(whole))
    with pytest.raises(defs.NVMLError_InsufficientResources):
        fake.nvmlDeviceCreateGpuInstanceWithPlacement(h, 0, ctypes.byref(whole))
    ci_info = fake.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE, 0
    )
    ci = fake.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
    with pytest.raises(defs.NVMLError_InUse):  # compute instances still on it
        fake.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(defs.NVMLError_NotFound):  # MIG device indices are sparse
        fake.nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
    mig_handle = fake.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    assert fake.nvmlDeviceGetUUID(mig_handle).startswith("MIG-")
    fake.nvmlComputeInstanceDestroy(ci)
    with pytest.raises(defs.NVMLError_InvalidArgument):  # a stale MIG device handle
        fake.nvmlDeviceGetGpuInstanceId(mig_handle)
    fake.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(AssertionError):
        fake.nvmlDeviceSetMigMode(h, 0)
