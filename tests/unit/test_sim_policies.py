"""The comparison policies: the hindsight search, packing, the HPA-like baseline, ours' plans."""

from __future__ import annotations

import pytest
from migserve_cli.sim.baselines import HpaController
from migserve_cli.sim.config import SimConfig, SimModel, perf_for
from migserve_cli.sim.hindsight import Choice, choose, pack
from migserve_cli.sim.ours import ScalerController
from migserve_cli.sim.simulator import Simulator
from migserve_cli.sim.traces import synthetic_trace
from migserve_scaler.core import PutPlan
from migserve_shared import mig
from migserve_shared.messages import ModelSpec, Plan

A100 = mig.gpu_model("A100-SXM4-40GB")


def _model(slo_ms: float, *, max_replicas: int = 2, engine: str = "sim") -> SimModel:
    spec = ModelSpec(
        model_id="m/x",
        engine=engine,  # type: ignore[arg-type]
        memory_mb=4000,
        tpot_slo_ms=slo_ms,
        max_replicas=max_replicas,
    )
    return SimModel(spec, weights_scale=0.2)


def test_hindsight_takes_the_cheapest_allocation_that_meets_the_slo() -> None:
    trace = synthetic_trace([(60, 2)], prompt_tokens=100, output_tokens=20)
    relaxed = choose(SimConfig(gpus=2), [_model(100.0)], trace)
    assert [(c.profile, c.replicas, c.meets) for c in relaxed] == [("1g.5gb", 1, True)]
    # 1g.5gb's lone-request TPOT is above this SLO: a slice with more memory bandwidth is needed
    alone_1g = perf_for(_model(1.0), A100.profile("1g.5gb")).tpot_ms(1)
    strict = choose(SimConfig(gpus=2), [_model(alone_1g - 1)], trace)
    assert strict[0].meets and strict[0].profile != "1g.5gb"
    impossible = choose(SimConfig(gpus=2), [_model(1.0)], trace)
    assert not impossible[0].meets


def test_packing_follows_the_mig_rules() -> None:
    choices = [
        Choice("a", "3g.20gb", 2, 1.0, 0, True, 1),
        Choice("b", "7g.40gb", 1, 1.0, 0, True, 1),
        Choice("c", "1g.5gb", 1, 1.0, 0, True, 1),
    ]
    layout, missing = pack(choices, A100, 3)
    assert not missing
    for gpu in range(3):
        mig.validate_layout(
            A100,
            [mig.Slice(A100.profile(p.profile).id, p.start) for p in layout if p.gpu == gpu],
        )
    # 3g at 0 and 3g at 4 take all 8 memory slices: the 1g fits on neither of two GPUs
    _, missing = pack(choices, A100, 2)
    assert missing == ["c on 1g.5gb"]


def test_hpa_adds_whole_gpus_under_load_and_keeps_them_through_the_window() -> None:
    model = _model(100.0, max_replicas=3)
    trace = synthetic_trace([(30, 1), (120, 20), (400, 0.2)], prompt_tokens=100, output_tokens=200)
    hpa = HpaController(target_in_flight=4)
    config = SimConfig(gpus=4, engine_start_s=10.0, hpa_downscale_window_s=120.0)
    sim = Simulator(config=config, models=[model], trace=trace, controller=hpa)
    sim.run()
    made = [r for r in sim.cluster.history]
    assert len(made) == 3  # 1 at start, 2 more under load (max_replicas)
    assert all(r.profile.name == "7g.40gb" and r.start == 0 for r in made)
    assert sim.cluster.layout_changes >= 3
    added = [r.created_at for r in made[1:]]
    gone = [r.destroyed_at for r in made[1:] if r.destroyed_at is not None]
    assert all(30 <= t <= 60 for t in added)
    # scale-down waits for the stabilisation window after the load ended at 150 s
    assert gone and min(gone) >= 150 + 120 - config.hpa_sync_s
    assert sim.agent.stats.reconfigurations == 0  # whole GPUs: no MIG operations


def test_ours_plans_go_through_compare_and_set() -> None:
    controller = ScalerController()
    plan = Plan(plan_id="p1", model_id="m/x", action="create")
    assert controller._put_plan(PutPlan(plan, None))
    assert not controller._put_plan(PutPlan(plan, None))  # the key holds a plan now
    revision = controller.plans["m/x"].revision
    assert not controller._put_plan(PutPlan(plan, revision + 1))
    assert controller._put_plan(PutPlan(plan, revision))
    assert controller.plans["m/x"].revision > revision


@pytest.mark.parametrize("engine", ["sim", "vllm"])
def test_slots_follow_the_engine_adapters(engine: str) -> None:
    model = _model(100.0, engine=engine)
    trace = synthetic_trace([(1, 1)])
    sim = Simulator(
        config=SimConfig(gpus=1), models=[model], trace=trace, controller=HpaController()
    )
    sim.controller.start(sim)
    (inst,) = sim.instances.values()
    assert inst.slots == {"sim": 4, "vllm": 8}[engine] * 7
