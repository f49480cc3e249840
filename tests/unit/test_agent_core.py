"""The agent's pure parts: reconcile decisions, inventory, settings, the sim adapter, ledger."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from migserve_agent.core import build_node_state, plan_reconcile, same_inventory
from migserve_agent.engines.base import EngineArgsError
from migserve_agent.engines.registry import default_registry
from migserve_agent.engines.sim import SimEngineAdapter
from migserve_agent.gpu.base import GpuInfo, OwnedSlice, SliceInfo
from migserve_agent.gpu.ownership import SliceOwnership
from migserve_agent.gpu.simulated import SimFaults, SimGpuSpec
from migserve_agent.ledger import CommandLedger, Outcome
from migserve_agent.locks import KeyedLocks
from migserve_agent.runtime.process import DEFAULT_BRIDGE_COMMAND
from migserve_agent.settings import settings_from_env
from migserve_agent.sim_engine.__main__ import build_parser, config_from_args
from migserve_shared import mig
from migserve_shared.errors import ConfigError, ErrorCode, NotSupportedError
from migserve_shared.messages import InstanceRecord, InstanceState, ModelSpec

# Reconcile -------------------------------------------------------------------------


def _slice(uuid: str, start: int = 0, gi: int = 1) -> SliceInfo:
    return SliceInfo(
        gpu_index=0, gi_id=gi, ci_id=0, profile_id=19, profile="1g.5gb", start=start,
        uuid=uuid, memory_mb=4864, sm_count=14,
    )  # fmt: skip


def _owned(uuid: str, instance_id: str) -> OwnedSlice:
    return OwnedSlice(
        uuid=uuid, gpu_index=0, gpu_uuid="GPU-0", gi_id=1, profile="1g.5gb", start=0,
        instance_id=instance_id,
    )  # fmt: skip


def _record(
    instance_id: str, state: InstanceState = "ready", slice_uuid: str = ""
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id, model_id="m", node="n", gpu_index=0, profile="1g.5gb",
        start=0, state=state, slice_uuid=slice_uuid or f"MIG-{instance_id}",
    )  # fmt: skip


def test_running_instance_with_its_slice_is_adopted() -> None:
    fixes = plan_reconcile(
        records=[_record("a")],
        running={"a"},
        slices=[_slice("MIG-a")],
        owned=[_owned("MIG-a", "a")],
        runtime_known={"a": "m"},
    )
    assert [r.instance_id for r in fixes.adopt] == ["a"]
    assert fixes.empty


@pytest.mark.parametrize(
    ("state", "running", "slice_exists", "reason"),
    [
        ("starting", True, True, "restarted while the instance was starting"),
        ("ready", False, True, "not running after the agent restarted"),
        ("draining", False, True, "not running"),
        ("ready", True, False, "no longer exists"),
        ("failed", True, True, "left over in state failed"),
        ("stopped", False, False, "left over in state stopped"),
    ],
)
def test_instances_that_cannot_be_adopted_are_failed_and_cleaned(
    state: InstanceState, running: bool, slice_exists: bool, reason: str
) -> None:
    fixes = plan_reconcile(
        records=[_record("a", state)],
        running={"a"} if running else set(),
        slices=[_slice("MIG-a")] if slice_exists else [],
        owned=[_owned("MIG-a", "a")],
        runtime_known={"a": "m"},
    )
    assert fixes.adopt == ()
    [(record, why)] = fixes.fail
    assert record.instance_id == "a" and reason in why
    assert fixes.stop_processes == ("a",)
    if slice_exists:
        assert [(o.uuid, r) for o, r in fixes.destroy] == [
            ("MIG-a", "its instance failed (made for a)")
        ]
        assert fixes.forget == ()
    else:
        assert fixes.destroy == () and [o.uuid for o in fixes.forget] == ["MIG-a"]


def test_orphans_are_cleaned_and_foreign_slices_left_alone() -> None:
    fixes = plan_reconcile(
        records=[_record("a")],
        running={"a"},
        slices=[_slice("MIG-a"), _slice("MIG-orphan", 1, 2), _slice("MIG-foreign", 2, 3)],
        owned=[_owned("MIG-a", "a"), _owned("MIG-orphan", "gone"), _owned("MIG-vanished", "x")],
        runtime_known={"a": "m", "zombie": "m2"},
    )
    assert [r.instance_id for r in fixes.adopt] == ["a"]
    assert [(o.uuid, r) for o, r in fixes.destroy] == [
        ("MIG-orphan", "no instance uses it (made for gone)")
    ]
    assert [o.uuid for o in fixes.forget] == ["MIG-vanished"]
    assert fixes.stop_processes == ("zombie",)
    assert fixes.fail == ()


def test_our_gpu_instance_left_without_compute_instance_is_destroyed() -> None:
    # the agent died between destroying the compute instance and the GPU instance
    fixes = plan_reconcile(
        records=[], running=set(), slices=[_slice(""), _slice("", 1, 2)],
        owned=[_owned("MIG-half", "gone")], runtime_known={},
    )  # fmt: skip
    assert [o.uuid for o, _ in fixes.destroy] == ["MIG-half"]
    assert "teardown was interrupted" in fixes.destroy[0][1]
    assert fixes.forget == ()


def test_adopted_slice_missing_from_ownership_is_recorded_again() -> None:
    fixes = plan_reconcile(
        records=[_record("a")], running={"a"}, slices=[_slice("MIG-a")], owned=[],
        runtime_known={"a": "m"},
    )  # fmt: skip
    assert [(r.instance_id, s.uuid) for r, s in fixes.reown] == [("a", "MIG-a")]
    assert fixes.destroy == ()


# Inventory -------------------------------------------------------------------------


def test_node_state_marks_our_slices() -> None:
    gpu = GpuInfo(index=0, uuid="GPU-0", name="NVIDIA A100-SXM4-40GB", mig_enabled=True,
                  memory_mb=40960)  # fmt: skip
    state = build_node_state(
        node="n1",
        agent_id="n1-x",
        gpu_backend="simulated",
        runtime="process",
        engines=["sim"],
        gpus=[(gpu, [_slice("MIG-a"), _slice("MIG-b", 1, 2)])],
        owned={"MIG-a": _owned("MIG-a", "inst-a")},
        now=5.0,
    )
    [g] = state.gpus
    assert g.model == "A100-SXM4-40GB"  # the mig name, not NVML's
    assert [(s.uuid, s.ours, s.instance_id) for s in g.slices] == [
        ("MIG-a", True, "inst-a"),
        ("MIG-b", False, None),
    ]
    later = build_node_state(
        node="n1", agent_id="n1-x", gpu_backend="simulated", runtime="process", engines=["sim"],
        gpus=[(gpu, [_slice("MIG-a"), _slice("MIG-b", 1, 2)])],
        owned={"MIG-a": _owned("MIG-a", "inst-a")}, now=9.0,
    )  # fmt: skip
    assert same_inventory(state, later)
    assert not same_inventory(None, later)
    changed = build_node_state(
        node="n1", agent_id="n1-x", gpu_backend="simulated", runtime="process", engines=["sim"],
        gpus=[(gpu, [_slice("MIG-a")])], owned={}, now=9.0,
    )  # fmt: skip
    assert not same_inventory(state, changed)


# Settings --------------------------------------------------------------------------

BASE = {"MIGSERVE_NODE": "node-1", "MIGSERVE_STATE_DIR": "/tmp/migserve-agent-test"}


def test_settings_defaults() -> None:
    s = settings_from_env(BASE)
    assert s.node == "node-1" and s.state_dir == Path("/tmp/migserve-agent-test")
    assert s.gpu_backend == "simulated" and s.runtime == "process"
    assert s.sim_gpus == (SimGpuSpec("A100-SXM4-40GB"),)
    assert (s.sim_gpu.create_latency_s, s.sim_gpu.faults) == (0.3, SimFaults())
    assert s.engine_host == "127.0.0.1"
    assert (s.sim_engine_startup_s, s.ready_timeout_s) == (0.5, 120.0)
    assert s.bridge_command == DEFAULT_BRIDGE_COMMAND
    assert s.nats.url == "nats://127.0.0.1:4222" and s.metrics_port is None


def test_settings_from_everything() -> None:
    s = settings_from_env(
        {
            **BASE,
            "MIGSERVE_SIM_GPUS": "NVIDIA H100 80GB HBM3, H200-141GB",
            "MIGSERVE_SIM_FAULTS": '{"fail_create": 2}',
            "MIGSERVE_SIM_CREATE_LATENCY_S": "0",
            "MIGSERVE_BRIDGE_COMMAND": "python3 -c 'import time; time.sleep(9)'",
            "MIGSERVE_AGENT_READY_TIMEOUT_S": "5",
            "MIGSERVE_AGENT_METRICS_PORT": "9400",
            "MIGSERVE_LOG_LEVEL": "debug",
            "MIGSERVE_LOG_FORMAT": "text",
            "MIGSERVE_NATS_URL": "nats://10.0.0.1:4222",
        }
    )
    assert s.sim_gpus == (SimGpuSpec("H100-80GB"), SimGpuSpec("H200-141GB"))
    assert s.sim_gpu.faults.fail_create == 2 and s.sim_gpu.create_latency_s == 0
    assert s.bridge_command == ("python3", "-c", "import time; time.sleep(9)")
    assert s.ready_timeout_s == 5 and s.metrics_port == 9400
    assert (s.log_level, s.log_json) == ("DEBUG", False)
    assert s.nats.url == "nats://10.0.0.1:4222" and s.nats.name == "migserve-agent-node-1"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MIGSERVE_STATE_DIR": "/tmp/x"}, "MIGSERVE_NODE"),
        ({"MIGSERVE_NODE": "n"}, "MIGSERVE_STATE_DIR"),
        ({**BASE, "MIGSERVE_GPU_BACKEND": "cuda"}, "MIGSERVE_GPU_BACKEND"),
        ({**BASE, "MIGSERVE_RUNTIME": "kubernetes"}, "MIGSERVE_RUNTIME"),
        ({**BASE, "MIGSERVE_SIM_GPUS": "A100-SXM4-40GB,,"}, "MIGSERVE_SIM_GPUS"),
        ({**BASE, "MIGSERVE_SIM_GPUS": "Tesla T4"}, "MIGSERVE_SIM_GPUS"),
        ({**BASE, "MIGSERVE_SIM_FAULTS": "{nope"}, "MIGSERVE_SIM_FAULTS"),
        ({**BASE, "MIGSERVE_AGENT_READY_TIMEOUT_S": "-1"}, "MIGSERVE_AGENT_READY_TIMEOUT_S"),
        ({**BASE, "MIGSERVE_SIM_ENGINE_STARTUP_S": "soon"}, "MIGSERVE_SIM_ENGINE_STARTUP_S"),
        ({**BASE, "MIGSERVE_BRIDGE_COMMAND": "'unclosed"}, "MIGSERVE_BRIDGE_COMMAND"),
        ({**BASE, "MIGSERVE_LOG_LEVEL": "loud"}, "MIGSERVE_LOG_LEVEL"),
        ({**BASE, "MIGSERVE_NATS_URL": "http://x"}, "MIGSERVE_NATS_URL"),
        ({**BASE, "MIGSERVE_AGENT_METRICS_PORT": "70000"}, "MIGSERVE_AGENT_METRICS_PORT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings_from_env(env)


def test_state_dir_must_be_a_directory(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="MIGSERVE_STATE_DIR"):
        settings_from_env({"MIGSERVE_NODE": "n", "MIGSERVE_STATE_DIR": str(afile)})


# The sim engine adapter ------------------------------------------------------------------


def _spec(**args: str) -> ModelSpec:
    return ModelSpec(model_id="org/m:1", memory_mb=100, tpot_slo_ms=50, engine_args=args)


@pytest.mark.parametrize(
    ("gpu", "profile", "slots"),
    [
        ("A100-SXM4-40GB", "1g.5gb", 4),
        ("A100-SXM4-40GB", "1g.10gb", 4),
        ("A100-SXM4-40GB", "3g.20gb", 12),
        ("H100-80GB", "7g.80gb", 28),
    ],
)
def test_sim_slots_follow_compute_slices(gpu: str, profile: str, slots: int) -> None:
    adapter = SimEngineAdapter()
    assert adapter.slots(_spec(), mig.gpu_model(gpu).profile(profile)) == slots
    assert adapter.slots(_spec(slots="3"), mig.gpu_model(gpu).profile(profile)) == 3


def test_sim_launch_passes_the_real_slice_shape() -> None:
    """1g.10gb is 2 memory slices on an A100-40GB but 1 on an H100: say so explicitly."""
    adapter = SimEngineAdapter(python="py", startup_delay_s=0.25)
    for gpu, memory in (("A100-SXM4-40GB", "2"), ("H100-80GB", "1")):
        profile = mig.gpu_model(gpu).profile("1g.10gb")
        launch = adapter.launch(
            spec=_spec(speed_factor="2", slots="9"), profile=profile, host="127.0.0.1",
            port=8123, slots=9,
        )  # fmt: skip
        argv = list(launch.argv)
        assert argv[:3] == ["py", "-m", "migserve_agent.sim_engine"]
        flags = dict(zip(argv[3::2], argv[4::2], strict=True))
        assert flags["--memory-slices"] == memory and flags["--compute-slices"] == "1"
        assert flags["--port"] == "8123" and flags["--slots"] == "9"
        assert flags["--speed-factor"] == "2" and flags["--startup-delay"] == "0.25"
        assert flags["--model"] == "org/m:1" and flags["--profile"] == "1g.10gb"
        assert launch.health_path == "/health"
        assert launch.chat_route == "/v1/chat/completions"


def test_sim_launch_argv_parses_with_the_sim_engine_cli() -> None:
    profile = mig.gpu_model("H200-141GB").profile("3g.71gb")
    launch = SimEngineAdapter().launch(
        spec=_spec(startup_delay="0", max_queue="5"), profile=profile, host="127.0.0.1",
        port=0, slots=12,
    )  # fmt: skip
    config = config_from_args(build_parser().parse_args(list(launch.argv[3:])))
    assert (config.profile.compute_slices, config.profile.memory_slices) == (3, 4)
    assert (config.slots, config.max_queue, config.startup_delay_s) == (12, 5, 0.0)


@pytest.mark.parametrize(
    ("args", "faults"),
    [
        ({"fail_start": "true"}, (True, False)),
        ({"never_healthy": "YES", "fail_start": "false"}, (False, True)),
        ({"never-healthy": "0"}, (False, False)),
    ],
)
def test_sim_fault_engine_args_become_flags(
    args: dict[str, str], faults: tuple[bool, bool]
) -> None:
    profile = mig.gpu_model("A100-SXM4-40GB").profile("1g.5gb")
    launch = SimEngineAdapter().launch(
        spec=_spec(**args), profile=profile, host="127.0.0.1", port=0, slots=4
    )
    config = config_from_args(build_parser().parse_args(list(launch.argv[3:])))
    assert (config.fail_start, config.never_healthy) == faults


@pytest.mark.parametrize(
    "args",
    [{"port": "1"}, {"slots": "0"}, {"speed_factor": "fast"}, {"alpha_ms": "nan"},
     {"startup_delay": "-1"}, {"--model": "x"},
     {"fail_start": "maybe"}],
)  # fmt: skip
def test_sim_refuses_bad_engine_args(args: dict[str, str]) -> None:
    with pytest.raises(EngineArgsError, match=r"org/m:1") as info:
        SimEngineAdapter().launch(
            spec=_spec(**args), profile=mig.gpu_model("H100-80GB").profile("1g.10gb"),
            host="h", port=1, slots=1,
        )  # fmt: skip
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_registry() -> None:
    registry = default_registry(sim_startup_s=0.1, python=sys.executable)
    assert {"sim", "llamacpp"} <= set(registry.kinds())
    assert registry.get("sim").kind == "sim"
    with pytest.raises(NotSupportedError, match="nope"):
        registry.get("nope")


# Files and locks -------------------------------------------------------------------------


def test_ledger_survives_and_is_bounded(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "c.json", limit=3)
    for i in range(5):
        ledger.record(Outcome(command_id=f"c{i}", ok=i % 2 == 0, code=ErrorCode.TIMEOUT))
    again = CommandLedger(tmp_path / "c.json", limit=3)
    assert [again.get(f"c{i}") is not None for i in range(5)] == [False, False, True, True, True]
    got = again.get("c3")
    assert got is not None and not got.ok and got.code is ErrorCode.TIMEOUT
    (tmp_path / "bad.json").write_text("nope")
    assert CommandLedger(tmp_path / "bad.json").get("c1") is None


def test_ownership_survives(tmp_path: Path) -> None:
    owned = SliceOwnership(tmp_path / "o.json")
    owned.record(_owned("MIG-a", "a"))
    owned.record(_owned("MIG-b", "b"))
    owned.forget("MIG-a")
    again = SliceOwnership(tmp_path / "o.json")
    assert [o.uuid for o in again.all()] == ["MIG-b"]
    assert again.for_instance("b") == _owned("MIG-b", "b")
    assert again.get("MIG-a") is None


async def test_keyed_locks_serialize_one_key_only() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, name: str, delay: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(delay)
            order.append(f"{name}-")

    await asyncio.gather(work("g0", "a", 0.05), work("g0", "b", 0), work("g1", "c", 0))
    assert order.index("a-") < order.index("b+")  # same key: one after the other
    assert order.index("c+") < order.index("a-")  # other key: at once
    assert not locks.busy("g0") and not locks.busy("g1")
