"""The simulated GPU backend: MIG rules through the backend, NVML errors, persistence, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from migserve_agent.gpu.base import GpuBackend
from migserve_agent.gpu.simulated import (
    SimFaults,
    SimGpuConfig,
    SimGpuSpec,
    SimulatedGpuBackend,
    parse_faults,
    processes_using,
)
from migserve_shared import mig
from migserve_shared.errors import (
    ConfigError,
    ErrorCode,
    InsufficientResourcesError,
    InUseError,
    MigError,
    NoPermissionError,
    NotFoundError,
    NotSupportedError,
)

Make = Callable[..., SimulatedGpuBackend]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    def build(
        *models: str,
        config: SimGpuConfig | None = None,
        seed: str = "seed",
        busy: dict[str, list[int]] | None = None,
        mig_enabled: bool = True,
    ) -> SimulatedGpuBackend:
        table = busy if busy is not None else {}
        return SimulatedGpuBackend(
            [SimGpuSpec(m, mig_enabled) for m in (models or ("A100-SXM4-40GB",))],
            state_file=tmp_path / "gpus.json",
            seed=seed,
            config=config,
            process_finder=lambda uuid: table.get(uuid, []),
        )

    return build


def test_it_is_a_gpu_backend(make: Make) -> None:
    backend: GpuBackend = make()
    assert backend.name == "simulated"


@pytest.mark.parametrize(
    ("model", "nvml_name", "memory_mb"),
    [
        ("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", 40960),
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920),
        ("H100-80GB", "NVIDIA H100 80GB", 81920),
        ("H200-141GB", "NVIDIA H200", 144384),
    ],
)
def test_gpus_look_like_nvml_reports_them(
    make: Make, model: str, nvml_name: str, memory_mb: int
) -> None:
    backend = make(model, model)
    gpus = backend.list_gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == nvml_name and mig.gpu_model(gpus[0].name).name == model
    assert gpus[0].memory_mb == memory_mb and gpus[0].mig_enabled
    assert gpus[0].uuid.startswith("GPU-") and gpus[0].uuid != gpus[1].uuid
    assert backend.list_slices(0) == []


def test_slices_carry_nvml_facts(make: Make) -> None:
    backend = make("H100-80GB")
    made = backend.create_slice(0, "3g.40gb", 4)
    profile = mig.gpu_model("H100-80GB").profile("3g.40gb")
    assert (made.gpu_index, made.profile, made.profile_id, made.start) == (0, "3g.40gb", 9, 4)
    assert (made.memory_mb, made.sm_count) == (profile.memory_mb, profile.sm_count)
    assert made.uuid.startswith("MIG-") and made.ci_id == 0
    assert backend.list_slices(0) == [made]
    other = backend.create_slice(0, "4g.40gb", 0)
    assert other.gi_id != made.gi_id and other.uuid != made.uuid
    assert [s.start for s in backend.list_slices(0)] == [0, 4]  # listed by start


# (profile, start) sequences and whether the last one fits
SEQUENCES: list[tuple[str, list[tuple[str, int]], bool]] = [
    ("4g@0 + 3g@4", [("4g.20gb", 0), ("3g.20gb", 4)], True),
    ("3g + 3g", [("3g.20gb", 0), ("3g.20gb", 4)], True),
    ("7 x 1g", [("1g.5gb", s) for s in range(7)], True),
    ("8th 1g", [*(("1g.5gb", s) for s in range(7)), ("1g.5gb", 6)], False),
    ("2g+2g+2g+1g@6", [("2g.10gb", 0), ("2g.10gb", 2), ("2g.10gb", 4), ("1g.5gb", 6)], True),
    ("1g at slice 7", [("1g.5gb", 7)], False),
    ("3g at 2", [("3g.20gb", 2)], False),
    ("+me twice", [("1g.5gb+me", 0), ("1g.5gb+me", 3)], False),
    ("overlap", [("4g.20gb", 0), ("2g.10gb", 2)], False),
    ("7g after a 1g", [("1g.5gb", 6), ("7g.40gb", 0)], False),
]


@pytest.mark.parametrize(("what", "steps", "fits"), SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_placement_rules_through_the_backend(
    make: Make, what: str, steps: list[tuple[str, int]], fits: bool
) -> None:
    backend = make()
    *before, (profile, start) = steps
    for name, st in before:
        backend.create_slice(0, name, st)
    if fits:
        backend.create_slice(0, profile, start)
        assert len(backend.list_slices(0)) == len(steps)
    else:
        with pytest.raises(InsufficientResourcesError):
            backend.create_slice(0, profile, start)
        assert len(backend.list_slices(0)) == len(before)


def test_order_of_creation_does_not_matter_with_explicit_placement(make: Make) -> None:
    """NVIDIA's own example 19,19,14,9 fails without placements; with them it fits."""
    backend = make()
    for profile, start in (("1g.5gb", 0), ("1g.5gb", 1), ("2g.10gb", 2), ("3g.20gb", 4)):
        backend.create_slice(0, profile, start)
    assert [s.profile for s in backend.list_slices(0)] == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]


def test_nvml_errors(make: Make) -> None:
    backend = make()
    with pytest.raises(NotSupportedError, match=r"5g\.50gb"):
        backend.create_slice(0, "5g.50gb", 0)
    with pytest.raises(NotSupportedError):
        backend.create_slice(0, "1g.10gb+me", 0)  # an A100-80GB name
    with pytest.raises(NotFoundError, match="index 2"):
        backend.create_slice(2, "1g.5gb", 0)
    with pytest.raises(NotFoundError):
        backend.list_slices(-1)
    with pytest.raises(NotFoundError, match="GPU instance 9"):
        backend.destroy_slice(0, 9)
    made = backend.create_slice(0, "1g.5gb", 0)
    backend.destroy_slice(0, made.gi_id)
    with pytest.raises(NotFoundError):
        backend.destroy_slice(0, made.gi_id)


def test_mig_disabled_is_not_supported(make: Make) -> None:
    backend = make(mig_enabled=False)
    assert not backend.list_gpus()[0].mig_enabled
    with pytest.raises(NotSupportedError, match="MIG is not enabled"):
        backend.create_slice(0, "1g.5gb", 0)


def test_destroy_frees_the_placement(make: Make) -> None:
    backend = make()
    big = backend.create_slice(0, "7g.40gb", 0)
    with pytest.raises(InsufficientResourcesError):
        backend.create_slice(0, "1g.5gb", 0)
    backend.destroy_slice(0, big.gi_id)
    backend.create_slice(0, "1g.5gb", 0)


def test_a_slice_with_processes_cannot_be_destroyed(make: Make) -> None:
    busy: dict[str, list[int]] = {}
    backend = make(busy=busy)
    made = backend.create_slice(0, "2g.10gb", 2)
    busy[made.uuid] = [4242]
    assert backend.slice_processes(0, made.gi_id) == [4242]
    with pytest.raises(InUseError, match="4242"):
        backend.destroy_slice(0, made.gi_id)
    assert backend.list_slices(0) == [made]
    busy[made.uuid] = []
    backend.destroy_slice(0, made.gi_id)
    assert backend.list_slices(0) == []


@pytest.fixture
def on_slice() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(uuid: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid}
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_processes_are_found_by_their_visible_device(
    tmp_path: Path, on_slice: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    backend = SimulatedGpuBackend(
        [SimGpuSpec("A100-SXM4-40GB")], state_file=tmp_path / "g.json", seed="real-proc"
    )
    made = backend.create_slice(0, "1g.5gb", 3)
    assert processes_using(made.uuid) == []
    proc = on_slice(made.uuid)
    deadline = time.monotonic() + 5
    while not processes_using(made.uuid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.slice_processes(0, made.gi_id) == [proc.pid]
    with pytest.raises(InUseError):
        backend.destroy_slice(0, made.gi_id)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    backend.destroy_slice(0, made.gi_id)


def test_slices_survive_a_new_backend_on_the_same_file(make: Make) -> None:
    first = make("A100-SXM4-40GB", "H100-80GB")
    a = first.create_slice(0, "3g.20gb", 0)
    b = first.create_slice(1, "1g.10gb", 6)
    second = make("A100-SXM4-40GB", "H100-80GB")
    assert second.list_slices(0) == [a] and second.list_slices(1) == [b]
    assert second.list_gpus() == first.list_gpus()
    # the rules still see the persisted slices
    with pytest.raises(InsufficientResourcesError):
        second.create_slice(0, "4g.20gb", 0)
    second.destroy_slice(1, b.gi_id)
    assert make("A100-SXM4-40GB", "H100-80GB").list_slices(1) == []


def test_a_gpu_whose_model_changed_starts_empty(make: Make) -> None:
    first = make("A100-SXM4-40GB", "A100-SXM4-40GB")
    first.create_slice(0, "1g.5gb", 0)
    kept = first.create_slice(1, "1g.5gb", 0)
    swapped = make("H200-141GB", "A100-SXM4-40GB")
    assert swapped.list_slices(0) == []
    assert swapped.list_slices(1) == [kept]
    assert swapped.list_gpus()[0].name == "NVIDIA H200"


def test_unreadable_state_is_moved_aside(tmp_path: Path, make: Make) -> None:
    (tmp_path / "gpus.json").write_text("{broken")
    backend = make()
    assert backend.list_slices(0) == []
    assert (tmp_path / "gpus.corrupt").read_text() == "{broken"


def test_uuids_are_deterministic_per_seed(tmp_path: Path) -> None:
    def run(seed: str, where: str) -> list[str]:
        backend = SimulatedGpuBackend(
            [SimGpuSpec("A100-SXM4-40GB")], state_file=tmp_path / where / "g.json", seed=seed
        )
        made = backend.create_slice(0, "1g.5gb", 0)
        backend.destroy_slice(0, made.gi_id)
        again = backend.create_slice(0, "1g.5gb", 0)
        return [backend.list_gpus()[0].uuid, made.uuid, again.uuid]

    one, same, other = run("node-1", "a"), run("node-1", "b"), run("node-2", "c")
    assert one == same
    assert one[1] != one[2]  # a re-made slice gets a new UUID, like a real one
    assert not set(one) & set(other)


def test_injected_create_failures(make: Make) -> None:
    backend = make(config=SimGpuConfig(faults=SimFaults(fail_create=2)))
    for _ in range(2):
        with pytest.raises(InsufficientResourcesError, match="injected"):
            backend.create_slice(0, "1g.5gb", 0)
    backend.create_slice(0, "1g.5gb", 0)
    assert backend.faults.fail_create == 0
    backend.inject(SimFaults(fail_create=1, fail_create_code="no_permission"))
    with pytest.raises(NoPermissionError):
        backend.create_slice(0, "1g.5gb", 1)
    backend.inject(SimFaults(fail_create=1, fail_create_code="internal"))
    with pytest.raises(MigError) as info:  # no NVML code: may pass on a second attempt
        backend.create_slice(0, "1g.5gb", 1)
    assert info.value.code is ErrorCode.INTERNAL
    backend.inject(SimFaults(fail_create=1, fail_create_code="in_use"))
    with pytest.raises(InUseError):
        backend.create_slice(0, "1g.5gb", 1)


def test_injected_busy_destroys(make: Make) -> None:
    backend = make(config=SimGpuConfig(faults=SimFaults(destroy_in_use=1)))
    made = backend.create_slice(0, "1g.5gb", 0)
    with pytest.raises(InUseError, match="injected"):
        backend.destroy_slice(0, made.gi_id)
    backend.destroy_slice(0, made.gi_id)


def test_latency_and_slow_operations(make: Make) -> None:
    backend = make(config=SimGpuConfig(create_latency_s=0.05, faults=SimFaults(slow_s=0.05)))
    began = time.monotonic()
    made = backend.create_slice(0, "1g.5gb", 0)
    assert time.monotonic() - began >= 0.1
    began = time.monotonic()
    backend.destroy_slice(0, made.gi_id)
    assert time.monotonic() - began >= 0.05


def test_fault_config_from_json() -> None:
    faults = parse_faults('{"fail_create": 1, "destroy_in_use": 2, "slow_s": 0.5}', variable="V")
    assert faults == SimFaults(fail_create=1, destroy_in_use=2, slow_s=0.5)
    for bad in ('{"fail_create": -1}', '{"explode": true}', "[1]", "{", '{"slow_s": "x"}'):
        with pytest.raises(ConfigError, match="V="):
            parse_faults(bad, variable="V")


def test_unknown_gpu_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotSupportedError, match="RTX"):
        SimulatedGpuBackend([SimGpuSpec("RTX 4090")], state_file=tmp_path / "g.json", seed="s")
    with pytest.raises(ConfigError):
        SimulatedGpuBackend([], state_file=tmp_path / "g.json", seed="s")
