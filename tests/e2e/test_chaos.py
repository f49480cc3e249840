"""Chaos: SIGKILL one part of the local stack under steady streaming load, record what
happens, check the invariants after each scenario.

One stack for the module (two gateways sharing a port, two simulated nodes,
sim engines); the scenarios run in file order and each leaves the stack whole
again (the killed process restarted). Each failed request must fail clearly
(a connection error, an HTTP error with a JSON body, or an ``error`` event in
the stream), never hang, and only requests that were in flight at the kill may
fail. ``docs/reliability.md`` has the table of measured results.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from migserve_cli import stack as local_stack
from migserve_cli.loadgen import LoadReport, run_load
from migserve_cli.procs import ProcessRef
from migserve_cli.status import read_cluster
from migserve_shared.bus import connect, send_command
from migserve_shared.env import NatsSettings
from migserve_shared.ids import new_id, new_trace_id
from migserve_shared.messages import CreateInstance, ModelSpec, RetireInstance, now

from e2e.reliability_support import (
    Launch,
    Loaded,
    check_invariants,
    describe,
    down_leaves_nothing,
    events_between,
    forget_process,
    launch_of,
    log_size,
    restart_service,
    stack_home,
    stack_ref,
    start_again,
    truncated,
    under_load,
    up_leaving_nothing,
    wait_gone,
    wait_log,
    wait_ready_instance,
    warm,
    warm_replaceable,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MODEL = "chaos/sim-model"
SPEC = ModelSpec(model_id=MODEL, engine="sim", memory_mb=1024, tpot_slo_ms=200)
TOKEN_IDLE_S = 6.0
#: clear failures: the request ended with a reason, never by the client's timeout
CLEAR = {
    "connect_error",
    "disconnected_before_response",
    "disconnected_mid_stream",
    "stream_error",
    "incomplete_stream",
} | {f"http_{code}" for code in (500, 502, 503, 504)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackFile]:
    home = tmp_path_factory.mktemp("chaos")
    opts = local_stack.StackOptions(
        home=home,
        engine="sim",
        models=[SPEC],
        nodes=2,
        gateway_port=0,
        gateways=2,
        sim_engine_startup_s=0.2,
        metrics_source="direct",
        extra_env={
            "MIGSERVE_TOKEN_IDLE_TIMEOUT_S": str(TOKEN_IDLE_S),
            "MIGSERVE_AGENT_WATCH_INTERVAL_S": "0.5",
            "MIGSERVE_WATCHER_INTERVAL_S": "1",
            "MIGSERVE_WATCHER_WINDOW_S": "5",
            "MIGSERVE_SCALER_LEASE_TTL_S": "3",
            "MIGSERVE_SHUTDOWN_GRACE_S": "20",
        },
    )
    yield from up_leaving_nothing(opts)


def _unclear(report: LoadReport) -> list[str]:
    return [f"{r.error}: {r.detail[:200]}" for r in report.failures() if r.error not in CLEAR]


def _failed_outside(report: LoadReport, start: float, end: float) -> list[str]:
    """Failed requests that were not in flight in [start, end]."""
    return [
        f"{r.error} {r.start:.2f}-{r.end:.2f}"
        for r in report.failures()
        if r.end < start or r.start > end
    ]


def _print(name: str, out: Loaded) -> None:
    print(f"chaos {name}: {describe(out.report)}; {out.notes}")


async def test_kill_gateway_in_flight_fail_retries_land_on_the_other(
    stack: local_stack.StackFile,
) -> None:
    await warm(stack, MODEL)
    home = stack_home(stack)

    async def act(out: Loaded) -> None:
        r = await restart_service(home, "gateway-2", sig=signal.SIGKILL, down_s=2.0)
        out.notes["killed_at"] = time.time() - r.ready_after_s - 2.0
        out.notes["restart_ready_s"] = round(r.ready_after_s, 2)

    out = await under_load(stack.gateway_url, MODEL, act, settle_s=1.5)
    _print("gateway", out)
    report = out.report
    assert truncated(report) == [], describe(report)
    assert set(report.errors) <= {"disconnected_mid_stream"}, describe(report)
    assert report.failed <= 4, describe(report)  # at most the killed one's in-flight streams
    assert _failed_outside(report, out.action_started, out.action_started + 0.5) == []
    late = [r for r in report.records if r.start > out.action_started + 0.5]
    assert late and all(r.ok for r in late), describe(report)
    await check_invariants(home, demand_models=[MODEL])


async def test_kill_agent_engines_keep_serving_and_are_adopted(
    stack: local_stack.StackFile,
) -> None:
    await warm(stack, MODEL)
    home = stack_home(stack)
    before = await wait_ready_instance(stack.nats_url, MODEL)
    agent = f"mig-agent-{before.node}"
    offset = log_size(stack_ref(home, agent).log)

    async def act(out: Loaded) -> None:
        r = await restart_service(home, agent, sig=signal.SIGKILL, down_s=2.0)
        out.notes["restart_ready_s"] = round(r.ready_after_s, 2)

    out = await under_load(stack.gateway_url, MODEL, act)
    _print("mig-agent", out)
    assert out.report.failed == 0, describe(out.report)
    assert truncated(out.report) == [], describe(out.report)
    await wait_log(stack_ref(home, agent), offset, "1 instance(s) adopted", 1)
    view = await check_invariants(home, demand_models=[MODEL])
    after = [i for i in view.instances if i.model_id == MODEL]
    assert [(i.instance_id, i.engine_pid, i.bridge_pid) for i in after] == [
        (before.instance_id, before.engine_pid, before.bridge_pid)
    ]


async def test_kill_watcher_no_decisions_while_down_then_resumes(
    stack: local_stack.StackFile,
) -> None:
    await warm(stack, MODEL)
    home = stack_home(stack)
    kinds = ("metrics.snapshot", "slo.violation", "slo.recovered", "slo.underload")

    async def act(out: Loaded) -> None:
        victim = stack_ref(home, "metrics-watcher")
        launch = launch_of(victim.pid)
        assert victim.signal(signal.SIGKILL)
        await wait_gone(victim, 5)
        out.notes["down_from"] = time.time()
        await asyncio.sleep(3.0)  # three watcher intervals
        out.notes["down_until"] = time.time()
        new = start_again(home, "metrics-watcher", launch, victim.log)
        await wait_log(new, log_size(victim.log), "watcher starting", 20)
        await asyncio.sleep(2.5)

    out = await under_load(stack.gateway_url, MODEL, act)
    down_from, down_until = float(out.notes["down_from"]), float(out.notes["down_until"])  # type: ignore[arg-type]
    while_down = await events_between(stack.nats_url, down_from, down_until, kinds)
    after = await events_between(stack.nats_url, down_until, time.time(), kinds)
    out.notes.update(while_down=len(while_down), after=len(after))
    _print("metrics-watcher", out)
    assert out.report.failed == 0, describe(out.report)
    assert truncated(out.report) == [], describe(out.report)
    assert while_down == []
    assert any(getattr(e, "model_id", "") == MODEL for e in after), after
    await check_invariants(home, demand_models=[MODEL])


async def test_kill_engine_in_flight_fail_clearly_instance_replaced(
    stack: local_stack.StackFile,
) -> None:
    old, waited = await warm_replaceable(stack, MODEL)
    home = stack_home(stack)

    async def act(out: Loaded) -> None:
        engine = ProcessRef.of("engine", old.engine_pid or 0)
        assert engine.signal(signal.SIGKILL)
        began = time.monotonic()
        new = await wait_ready_instance(stack.nats_url, MODEL, not_ids=[old.instance_id])
        out.notes["replaced_after_s"] = round(time.monotonic() - began, 2)
        out.notes["replacement"] = f"{new.node} {new.profile}@{new.start}"
        out.notes["ready_at"] = time.time()

    out = await under_load(stack.gateway_url, MODEL, act, settle_s=2.0)
    out.notes["waited_for_scaler_settle_s"] = round(waited, 1)
    _print("engine", out)
    report = out.report
    assert truncated(report) == [], describe(report)
    assert _unclear(report) == [], describe(report)
    assert report.failed <= 8, describe(report)
    # only requests in flight at the kill fail; jobs not started yet go to the replacement
    assert _failed_outside(report, out.action_started, out.action_started + 0.5) == []
    ready_at = float(out.notes["ready_at"])  # type: ignore[arg-type]
    late = [r for r in report.records if r.start > ready_at + 0.5]
    assert late and all(r.ok for r in late), describe(report)
    assert not ProcessRef.of("bridge", old.bridge_pid).alive()
    view = await check_invariants(home, demand_models=[MODEL])
    assert old.instance_id not in {i.instance_id for i in view.instances}


def _free_start(view_nodes: list, node: str) -> int:  # type: ignore[type-arg]
    used = {s.start for n in view_nodes if n.node == node for g in n.gpus for s in g.slices}
    return min(s for s in range(7) if s not in used)


async def test_restart_nats_clients_reconnect_no_command_lost(
    stack: local_stack.StackFile,
) -> None:
    await warm(stack, MODEL)
    home = stack_home(stack)
    serving = await wait_ready_instance(stack.nats_url, MODEL)
    other = next(n for n in stack.nodes if n != serving.node)
    agent = f"mig-agent-{other}"
    durable = ModelSpec(model_id="chaos/durable", engine="sim", memory_mb=1024, tpot_slo_ms=200)
    view = await read_cluster(stack.nats_url)
    start = _free_start(list(view.nodes), other)
    command = CreateInstance(
        command_id=new_id("cmd-"),
        trace_id=new_trace_id(),
        issued_at=now(),
        instance_id=new_id("inst-"),
        model=durable,
        gpu_index=0,
        profile="1g.5gb",
        start=start,
    )
    port = stack.nats_url.rsplit(":", 1)[1]

    def same_port(launch: Launch) -> Launch:
        argv = list(launch.argv)
        argv[argv.index("-p") + 1] = port
        return Launch(argv, launch.env, launch.cwd)

    async def act(out: Loaded) -> None:
        # the agent is away: the command waits in the stream across the NATS crash
        agent_ref = stack_ref(home, agent)
        agent_launch = launch_of(agent_ref.pid)
        assert agent_ref.signal(signal.SIGTERM)
        await wait_gone(agent_ref, 30)
        nc = await connect(NatsSettings(url=stack.nats_url, name="chaos-test"))
        try:
            await send_command(nc.jetstream(), other, command)
        finally:
            await nc.close()
        r = await restart_service(
            home, "nats-server", sig=signal.SIGKILL, down_s=1.0, launch_edit=same_port,
            marker="Server is ready",
        )  # fmt: skip
        out.notes["nats_down_s"] = round(1.0 + r.ready_after_s, 2)
        out.notes["nats_ready_at"] = time.time()
        new_agent = start_again(home, agent, agent_launch, agent_ref.log)
        await wait_log(new_agent, log_size(agent_ref.log), "instance(s) adopted", 30)

    # streams the outage cut stall until the gateway's token-idle timeout; then new ones run
    out = await under_load(stack.gateway_url, MODEL, act, settle_s=TOKEN_IDLE_S + 4, timeout_s=20)
    _print("nats-server", out)
    report = out.report
    assert truncated(report) == [], describe(report)
    assert _unclear(report) == [], describe(report)
    ready_at = float(out.notes["nats_ready_at"])  # type: ignore[arg-type]
    late = [r for r in report.records if r.start > ready_at + 2.0]
    assert late and all(r.ok for r in late), describe(report)
    inst = await wait_ready_instance(stack.nats_url, "chaos/durable", timeout_s=20)
    assert (inst.instance_id, inst.node) == (command.instance_id, other)
    nc = await connect(NatsSettings(url=stack.nats_url, name="chaos-test"))
    try:
        retire = RetireInstance(
            command_id=new_id("cmd-"),
            trace_id=command.trace_id,
            instance_id=inst.instance_id,
            drain_timeout_s=5,
            issued_at=now(),
        )
        await send_command(nc.jetstream(), other, retire)
    finally:
        await nc.close()
    for _ in range(100):
        view = await read_cluster(stack.nats_url)
        if inst.instance_id not in {i.instance_id for i in view.instances}:
            break
        await asyncio.sleep(0.2)
    await check_invariants(home, demand_models=[MODEL])


async def _lease_holder(nats_url: str) -> str:
    from migserve_shared import subjects
    from migserve_shared.bus import open_buckets

    nc = await connect(NatsSettings(url=nats_url, name="chaos-test"))
    try:
        buckets = await open_buckets(nc.jetstream())
        entry = await buckets.leader.get(subjects.SCALER_LEASE_KEY)
        assert entry.value is not None
        return str(msgspec.json.decode(entry.value)["holder"])
    finally:
        await nc.close()


async def test_kill_scaler_mid_plan_new_leader_resumes(stack: local_stack.StackFile) -> None:
    home = stack_home(stack)
    first = stack_ref(home, "scaler")
    ours = [p.name for p in stack.processes if p.name.startswith("scaler-")] == []
    if ours:  # the stack runs one scaler: start a second replica (stopped again below)
        launch = launch_of(first.pid)
        second_env = {**launch.env, "MIGSERVE_SCALER_ID": "scaler-2"}
        second_log = str(Path(first.log).with_name("scaler-2.log"))
        launch = Launch(launch.argv, second_env, launch.cwd)
        await wait_log(start_again(home, "scaler-2", launch, second_log), 0, "starting", 20)
    slow = ModelSpec(
        model_id="chaos/slow",
        engine="sim",
        memory_mb=1024,
        tpot_slo_ms=200,
        engine_args={"startup-delay": "4"},
    )
    try:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
            resp = await http.post(
                "/v1/admin/models",
                content=msgspec.json.encode(slow),
                headers={"content-type": "application/json"},
            )
            assert resp.status_code in (200, 201), resp.text
        await asyncio.sleep(1.0)  # the gateways see the model
        request = asyncio.create_task(
            run_load(stack.gateway_url, "chaos/slow", concurrency=1, duration_s=0.1, max_tokens=4)
        )
        plan = None
        for _ in range(100):
            view = await read_cluster(stack.nats_url)
            plan = next(
                (p for p in view.plans if p.model_id == "chaos/slow" and p.status == "running"),
                None,
            )
            if plan is not None:
                break
            await asyncio.sleep(0.1)
        assert plan is not None, "no plan for chaos/slow"
        holder = await _lease_holder(stack.nats_url)
        victim_name = "scaler" if holder == "scaler-1" else "scaler-2"
        victim = stack_ref(home, victim_name)
        victim_launch = launch_of(victim.pid)
        assert victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await wait_gone(victim, 5)
        report = await request
        inst = await wait_ready_instance(stack.nats_url, "chaos/slow", timeout_s=30)
        took = time.monotonic() - killed_at
        view = await check_invariants(home, demand_models=[MODEL, "chaos/slow"])
        print(
            f"chaos scaler: killed leader {holder} mid-plan {plan.plan_id}; instance ready "
            f"{took:.1f} s later; request: {describe(report)}; "
            f"new holder {await _lease_holder(stack.nats_url)}"
        )
        assert report.failed == 0, describe(report)
        slow_instances = [i for i in view.instances if i.model_id == "chaos/slow"]
        assert [i.instance_id for i in slow_instances] == [plan.steps[0].instance_id]
        for _ in range(50):  # the new leader marks the plan done from the results
            view = await read_cluster(stack.nats_url)
            final = next(p for p in view.plans if p.model_id == "chaos/slow")
            if final.status == "done":
                break
            await asyncio.sleep(0.2)
        assert (final.plan_id, final.status) == (plan.plan_id, "done")
        assert inst.instance_id == plan.steps[0].instance_id
        if victim_name == "scaler" or not ours:  # restart a replica of the stack
            offset = log_size(victim.log)
            new = start_again(home, victim_name, victim_launch, victim.log)
            await wait_log(new, offset, "starting", 20)
    finally:
        if ours:
            ref = stack_ref(home, "scaler-2")
            if ref.alive():
                ref.stop(10)
            forget_process(home, "scaler-2")


async def test_kill_bridge_streams_end_clearly_instance_replaced(
    stack: local_stack.StackFile,
) -> None:
    old, waited = await warm_replaceable(stack, MODEL)
    home = stack_home(stack)

    async def act(out: Loaded) -> None:
        bridge = ProcessRef.of("bridge", old.bridge_pid or 0)
        assert bridge.signal(signal.SIGKILL)
        began = time.monotonic()
        await wait_ready_instance(stack.nats_url, MODEL, not_ids=[old.instance_id])
        out.notes["replaced_after_s"] = round(time.monotonic() - began, 2)
        out.notes["ready_at"] = time.time()

    out = await under_load(stack.gateway_url, MODEL, act, settle_s=2.0)
    out.notes["waited_for_scaler_settle_s"] = round(waited, 1)
    _print("bridge", out)
    report = out.report
    assert truncated(report) == [], describe(report)
    assert _unclear(report) == [], describe(report)
    assert report.failed <= 4, describe(report)  # at most the streams the bridge held
    assert _failed_outside(report, out.action_started, out.action_started + 0.5) == []
    ready_at = float(out.notes["ready_at"])  # type: ignore[arg-type]
    late = [r for r in report.records if r.start > ready_at + 0.5]
    assert late and all(r.ok for r in late), describe(report)
    assert not ProcessRef.of("engine", old.engine_pid).alive()
    view = await check_invariants(home, demand_models=[MODEL])
    assert old.instance_id not in {i.instance_id for i in view.instances}


def test_down_leaves_no_process_and_no_slice(stack: local_stack.StackFile) -> None:
    home = stack_home(stack)
    assert down_leaves_nothing(home) == []
    assert local_stack.read_stack(home) is None
