"""The NVML GPU backend against the fake pynvml: slices, errors, UUIDs, MIG mode, ownership."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import pynvml_defs as defs
from fakes.fake_pynvml import FakeGpu, FakePynvml
from migserve_agent.core import plan_reconcile
from migserve_agent.gpu.base import GpuBackend, OwnedSlice
from migserve_agent.gpu.mig_mode import MigModeOffError
from migserve_agent.gpu.nvml import NvmlGpuBackend, NvmlUnavailableError
from migserve_agent.gpu.ownership import SliceOwnership
from migserve_shared import mig
from migserve_shared.errors import (
    InsufficientResourcesError,
    InUseError,
    MigError,
    NoPermissionError,
    NotFoundError,
    NotSupportedError,
)

Open = Callable[..., NvmlGpuBackend]


@pytest.fixture
def open_backend() -> Open:
    def build(fake: FakePynvml, **kwargs: object) -> NvmlGpuBackend:
        kwargs.setdefault("process_finder", lambda uuid: [])
        return NvmlGpuBackend(nvml=fake, **kwargs)  # type: ignore[arg-type]

    return build


def _names(model: mig.GpuModel) -> dict[str, str]:
    """Role -> this model's profile name (1g, 1g with two memory slices, 2g, 3g, 4g, 7g)."""
    by_id = {p.id: p.name for p in model.profiles}
    return {
        "1g": by_id[19],
        "1g2m": by_id[15],
        "2g": by_id[14],
        "3g": by_id[9],
        "4g": by_id[5],
        "7g": by_id[0],
    }


def test_it_is_a_gpu_backend(open_backend: Open) -> None:
    backend: GpuBackend = open_backend(FakePynvml())
    assert backend.name == "nvml"
    gpu = backend.list_gpus()[0]
    assert gpu.name == "NVIDIA A100-SXM4-40GB" and gpu.uuid.startswith("GPU-")
    assert gpu.mig_enabled and gpu.memory_mb == 40960
    assert gpu.mig_mode == "current enabled, pending enabled"


@pytest.mark.parametrize("model", [m.name for m in mig.GPU_MODELS])
def test_create_list_destroy_on_each_gpu_model(open_backend: Open, model: str) -> None:
    fake = FakePynvml([FakeGpu(model)])
    backend = open_backend(fake)
    gpu_model = mig.gpu_model(model)
    n = _names(gpu_model)
    layout = [(n["3g"], 0), (n["2g"], 4), (n["1g"], 6)]
    made = [backend.create_slice(0, name, start) for name, start in layout]

    listed = backend.list_slices(0)
    assert listed == made
    assert [(s.profile, s.start) for s in listed] == layout
    for s in listed:
        prof = gpu_model.profile(s.profile)
        assert s.profile_id == prof.id
        assert (s.memory_mb, s.sm_count) == (prof.memory_mb, prof.sm_count)  # NVML's numbers
        assert s.uuid.startswith("MIG-") and s.ci_id == 0
    assert len({s.uuid for s in listed}) == 3

    for s in made:
        backend.destroy_slice(0, s.gi_id)
    assert backend.list_slices(0) == []
    # compute instance first, then the GPU instance, for every slice
    teardown = [c for c in fake.mutating_calls() if "Destroy" in c]
    assert teardown == ["nvmlComputeInstanceDestroy", "nvmlGpuInstanceDestroy"] * 3
    whole = backend.create_slice(0, n["7g"], 0)
    assert whole.memory_mb == gpu_model.profile(n["7g"]).memory_mb
    backend.close()


def test_profile_index_gives_the_profile_id(open_backend: Open) -> None:
    """1g.10gb on an A100-40GB: info for index 9 (1_SLICE_REV2) has id 15; create uses 15."""
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB")])
    backend = open_backend(fake)
    made = backend.create_slice(0, "1g.10gb", 2)
    assert (made.profile_id, made.profile, made.start) == (15, "1g.10gb", 2)
    assert made.memory_mb == 9984
    plus_me = backend.create_slice(0, "1g.5gb+me", 0)
    assert plus_me.profile_id == 20
    assert {s.profile for s in backend.list_slices(0)} == {"1g.10gb", "1g.5gb+me"}


def test_explicit_placement_makes_layouts_that_default_placement_cannot(
    open_backend: Open,
) -> None:
    """NVIDIA's example 19, 19, 14, 9 fails without placements; planned starts fit."""
    backend = open_backend(FakePynvml())
    for name, start in (("1g.5gb", 2), ("1g.5gb", 3), ("2g.10gb", 0), ("3g.20gb", 4)):
        backend.create_slice(0, name, start)
    assert [(s.profile, s.start) for s in backend.list_slices(0)] == [
        ("2g.10gb", 0),
        ("1g.5gb", 2),
        ("1g.5gb", 3),
        ("3g.20gb", 4),
    ]


def test_placement_errors_name_the_values(open_backend: Open) -> None:
    fake = FakePynvml()
    backend = open_backend(fake)
    backend.create_slice(0, "4g.20gb", 0)
    with pytest.raises(InsufficientResourcesError, match=r"allows: 0, 4") as bad_start:
        backend.create_slice(0, "3g.20gb", 2)
    assert "3g.20gb cannot start at memory slice 2 on GPU 0" in str(bad_start.value)
    assert "nvmlDeviceCreateGpuInstanceWithPlacement" not in fake.calls[-3:]  # never tried
    with pytest.raises(InsufficientResourcesError) as overlap:
        backend.create_slice(0, "2g.10gb", 2)
    text = str(overlap.value)
    assert "2g.10gb at memory slice 2 on GPU 0" in text and "4g.20gb@0" in text
    assert isinstance(overlap.value.__cause__, defs.NVMLError_InsufficientResources)
    backend.create_slice(0, "3g.20gb", 4)  # 4g at 0 plus 3g at 4 is valid
    with pytest.raises(InsufficientResourcesError):  # no compute slice left
        backend.create_slice(0, "1g.5gb", 4)
    with pytest.raises(NotSupportedError, match=r"1g\.20gb.*A100-SXM4-40GB"):  # an H100 name
        backend.create_slice(0, "1g.20gb", 0)
    with pytest.raises(NotFoundError, match="no GPU with index 3"):
        backend.create_slice(3, "1g.5gb", 0)


def test_a_failed_compute_instance_undoes_its_gpu_instance(open_backend: Open) -> None:
    fake = FakePynvml()
    backend = open_backend(fake)
    fake.fail_next("nvmlGpuInstanceCreateComputeInstance", defs.NVML_ERROR_INSUFFICIENT_RESOURCES)
    with pytest.raises(InsufficientResourcesError, match=r"compute instance of 2g\.10gb"):
        backend.create_slice(0, "2g.10gb", 2)
    assert backend.list_slices(0) == []
    assert fake.mutating_calls()[-1] == "nvmlGpuInstanceDestroy"


def test_older_drivers_get_version_1_profile_info(open_backend: Open) -> None:
    fake = FakePynvml()
    backend = open_backend(fake)
    for call in (
        "nvmlDeviceGetGpuInstanceProfileInfo",
        "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    ):
        fake.fail_next(call, defs.NVML_ERROR_FUNCTION_NOT_FOUND)
    made = backend.create_slice(0, "2g.10gb", 0)
    assert (made.profile_id, made.sm_count) == (14, 28)


def test_errors_keep_their_nvml_cause(open_backend: Open) -> None:
    fake = FakePynvml()
    backend = open_backend(fake)
    fake.fail_next("nvmlDeviceCreateGpuInstanceWithPlacement", defs.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(NoPermissionError, match=r"creating 1g.5gb .* \(NVML error 4\)") as info:
        backend.create_slice(0, "1g.5gb", 0)
    assert isinstance(info.value.__cause__, defs.NVMLError_NoPermission)
    fake.fail_next("nvmlDeviceGetMaxMigDeviceCount", defs.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(MigError, match="GPU is lost"):
        backend.list_slices(0)


def test_destroying_a_slice_in_use_fails_and_keeps_it(open_backend: Open) -> None:
    fake = FakePynvml()
    backend = open_backend(fake, process_finder=lambda uuid: [777])
    made = backend.create_slice(0, "3g.20gb", 0)
    fake.attach_process(made.uuid, 4242)
    assert backend.slice_processes(0, made.gi_id) == [777, 4242]
    with pytest.raises(InUseError, match=r"processes on it: \[777, 4242\]") as info:
        backend.destroy_slice(0, made.gi_id)
    assert isinstance(info.value.__cause__, defs.NVMLError_InUse)
    assert backend.list_slices(0) == [made]
    assert "nvmlGpuInstanceDestroy" not in fake.mutating_calls()
    fake.detach_process(made.uuid, 4242)
    backend.destroy_slice(0, made.gi_id)
    with pytest.raises(NotFoundError, match="no GPU instance"):
        backend.destroy_slice(0, made.gi_id)


def test_uuids_are_found_after_other_slices_are_destroyed(open_backend: Open) -> None:
    """MIG device indices are sparse and reused; handles go stale: every lookup walks anew."""
    backend = open_backend(FakePynvml())
    a = backend.create_slice(0, "1g.5gb", 0)
    b = backend.create_slice(0, "1g.5gb", 1)
    c = backend.create_slice(0, "2g.10gb", 2)
    backend.destroy_slice(0, a.gi_id)
    backend.destroy_slice(0, b.gi_id)
    assert backend.list_slices(0) == [c]  # at MIG device index 2; 0 and 1 are empty
    d = backend.create_slice(0, "1g.5gb", 0)  # reuses GI id and MIG device index of a
    assert d.gi_id == a.gi_id and d.uuid not in (a.uuid, b.uuid, c.uuid)
    assert {s.uuid for s in backend.list_slices(0)} == {c.uuid, d.uuid}
    backend.destroy_slice(0, c.gi_id)
    assert backend.list_slices(0) == [d]


def test_slices_made_by_others_are_listed(open_backend: Open) -> None:
    fake = FakePynvml()
    theirs = fake.external_slice(0, "3g.20gb", 4)
    fake.external_slice(0, "1g.5gb", 0, with_ci=False)
    listed = open_backend(fake).list_slices(0)
    assert [(s.profile, s.start, s.uuid) for s in listed] == [
        ("1g.5gb", 0, ""),
        ("3g.20gb", 4, theirs),
    ]
    assert listed[0].ci_id == -1


@pytest.mark.parametrize(("current", "pending"), [(False, False), (True, False), (False, True)])
def test_mig_off_now_or_after_reset_is_refused(
    open_backend: Open, current: bool, pending: bool
) -> None:
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB", mig_current=current, mig_pending=pending)])
    backend = open_backend(fake)
    gpu = backend.list_gpus()[0]
    assert not gpu.mig_enabled
    assert gpu.mig_mode == (
        f"current {'enabled' if current else 'disabled'}, "
        f"pending {'enabled' if pending else 'disabled'}"
    )
    with pytest.raises(MigModeOffError, match=r"sudo nvidia-smi -i 0 -mig 1") as info:
        backend.create_slice(0, "1g.5gb", 0)
    assert "never changes MIG mode" in str(info.value)
    assert fake.mutating_calls() == []


def test_a_gpu_without_mig_is_reported_not_managed(open_backend: Open) -> None:
    fake = FakePynvml([FakeGpu("Tesla T4")])
    backend = open_backend(fake)
    gpu = backend.list_gpus()[0]
    assert (gpu.mig_enabled, gpu.mig_mode) == (False, "not supported by this GPU")
    assert backend.list_slices(0) == []


def test_no_driver_gives_a_clear_error(open_backend: Open) -> None:
    fake = FakePynvml(init_error=defs.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(NvmlUnavailableError, match="NVML is not available: NVML Shared Library"):
        open_backend(fake)


def test_gpu_selection(open_backend: Open) -> None:
    fake = FakePynvml([FakeGpu("A100-SXM4-40GB"), FakeGpu("H100-80GB")])
    backend = open_backend(fake, gpu_indices=[1])
    assert [g.index for g in backend.list_gpus()] == [1]
    assert backend.create_slice(1, "1g.10gb", 0).memory_mb == 9984
    with pytest.raises(NotFoundError, match=r"managed: \[1\]"):
        backend.list_slices(0)
    with pytest.raises(MigError, match=r"no GPU with index 5: NVML sees 1 GPU"):
        open_backend(FakePynvml(), gpu_indices=[5])


def test_close_shuts_nvml_down_once(open_backend: Open) -> None:
    fake = FakePynvml()
    with open_backend(fake) as backend:
        backend.list_gpus()
    backend.close()
    assert fake.calls.count("nvmlShutdown") == 1


def test_our_slices_are_marked_and_only_they_are_reconciled(
    open_backend: Open, tmp_path: Path
) -> None:
    """Ownership (GPU UUID + GI id + MIG UUID, in the state dir) works with real UUIDs."""
    fake = FakePynvml()
    theirs = fake.external_slice(0, "3g.20gb", 4)
    backend = open_backend(fake)
    gpu = backend.list_gpus()[0]
    ours = backend.create_slice(0, "2g.10gb", 0)
    ownership = SliceOwnership(tmp_path / "owned-slices.json")
    ownership.record(
        OwnedSlice(
            uuid=ours.uuid,
            gpu_index=0,
            gpu_uuid=gpu.uuid,
            gi_id=ours.gi_id,
            profile=ours.profile,
            start=ours.start,
            instance_id="i-1",
        )
    )
    backend.close()

    # the agent restarts: a new NVML session, fresh handles, the ownership file read back
    again = open_backend(fake)
    owned = SliceOwnership(tmp_path / "owned-slices.json").all()
    fixes = plan_reconcile(
        records=[], running=[], slices=again.list_slices(0), owned=owned, runtime_known=[]
    )
    assert [(o.uuid, o.gpu_uuid, o.gi_id) for o, _ in fixes.destroy] == [
        (ours.uuid, gpu.uuid, ours.gi_id)
    ]
    again.destroy_slice(0, ours.gi_id)
    assert [s.uuid for s in again.list_slices(0)] == [theirs]
