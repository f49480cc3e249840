"""End to end: the control loop on the local stack under load, with zero failed requests.

A low load runs throughout; a burst raises TPOT above the SLO on the first
(smallest) slice: slo.violation -> scale.decided -> slice.created ->
instance.ready (the bigger slice) -> the old instance draining -> stopped ->
its slice destroyed, all under the violation's trace id. After the burst the
model is underloaded and steps back down the same way. The scenario and the
phase table come from bench/control_loop.py (one implementation); the table is
printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from migserve_cli import stack as local_stack
from migserve_cli.status import read_cluster
from migserve_cli.trace import follow
from migserve_shared.messages import (
    CommandDone,
    InstanceDraining,
    InstanceReady,
    InstanceStopped,
    ScaleDecided,
    SliceCreated,
    SliceDestroyed,
    SloUnderload,
    SloViolation,
)

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "control_loop.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("control_loop_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def stack(
    bench: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[local_stack.StackFile]:
    home = tmp_path_factory.mktemp("control-loop")
    lines: list[str] = []
    try:
        yield local_stack.up(bench.stack_options(home), lines.append)
    finally:
        report = local_stack.down(home, lines.append)
        assert report.leftover_processes == [], lines
        assert report.leftover_slices == 0, lines


@pytest.fixture(scope="module")
def loop(bench: ModuleType, stack: local_stack.StackFile) -> object:
    result = asyncio.run(bench.run_loop(stack, say=print))
    print(bench.format_table(result))
    return result


def test_no_request_failed(loop: object) -> None:
    for report in (loop.burst, loop.low):  # type: ignore[attr-defined]
        assert report.failed == 0, report.errors
        assert report.ok > 0


def _story_order(story: object, slo_kind: type) -> None:
    plan = story.plan  # type: ignore[attr-defined]
    assert plan.status == "done", plan.reason
    new = next(s for s in plan.steps if s.op == "create")
    old = next(s for s in plan.steps if s.op == "retire")
    assert [s.op for s in plan.steps] == ["create", "retire"]  # make before break
    assert not plan.break_before_make

    def at(kind: type, instance: str | None = None) -> float:
        return next(
            e.time
            for e in story.events  # type: ignore[attr-defined]
            if isinstance(e, kind) and (instance is None or e.instance_id == instance)
        )

    marks = [
        at(slo_kind),
        at(ScaleDecided),
        at(SliceCreated, new.instance_id),
        at(InstanceReady, new.instance_id),
        at(InstanceDraining, old.instance_id),
        at(InstanceStopped, old.instance_id),
    ]
    assert marks == sorted(marks), marks
    assert at(SliceDestroyed, old.instance_id) >= at(InstanceDraining, old.instance_id)
    assert any(isinstance(e, CommandDone) for e in story.events)  # type: ignore[attr-defined]
    assert all(v >= 0 for v in story.phases.values()), story.phases  # type: ignore[attr-defined]


def test_load_step_scales_up_make_before_break(loop: object) -> None:
    up = loop.up  # type: ignore[attr-defined]
    _story_order(up, SloViolation)
    new = next(s for s in up.plan.steps if s.op == "create")
    old = next(s for s in up.plan.steps if s.op == "retire")
    assert (old.profile, new.profile) == ("1g.5gb", "2g.10gb")


def test_underload_steps_back_down(loop: object) -> None:
    down = loop.down  # type: ignore[attr-defined]
    _story_order(down, SloUnderload)
    new = next(s for s in down.plan.steps if s.op == "create")
    old = next(s for s in down.plan.steps if s.op == "retire")
    assert (old.profile, new.profile) == ("2g.10gb", "1g.5gb")


def test_one_instance_and_one_slice_remain(loop: object, stack: local_stack.StackFile) -> None:
    view = asyncio.run(read_cluster(stack.nats_url))
    live = [i for i in view.instances if i.state in ("starting", "ready", "draining")]
    assert [(i.profile, i.instance_id) for i in live] == [
        ("1g.5gb", next(s.instance_id for s in loop.down.plan.steps if s.op == "create"))  # type: ignore[attr-defined]
    ]
    slices = [s for n in view.nodes for g in n.gpus for s in g.slices]
    assert [(s.profile, s.instance_id) for s in slices] == [(live[0].profile, live[0].instance_id)]


def test_trace_shows_the_whole_story(loop: object, stack: local_stack.StackFile) -> None:
    trace = loop.up.plan.trace_id  # type: ignore[attr-defined]
    lines: list[str] = []
    asyncio.run(follow(stack.nats_url, lines.append, trace_id=trace, follow_s=0.5))
    kinds = [line.split()[1] for line in lines]
    for kind in (
        "slo.violation",
        "scale.decided",
        "slice.created",
        "instance.starting",
        "instance.ready",
        "instance.draining",
        "instance.stopped",
        "slice.destroyed",
        "command.done",
    ):
        assert kind in kinds, lines
