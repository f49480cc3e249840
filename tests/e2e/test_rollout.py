"""Rollouts drop nothing: SIGTERM each service of the local stack, one at a time, under
streaming load, start it again (as a Deployment's new pod would), count zero failures.

The stack runs two gateways on one port (SO_REUSEPORT, ``--gateways 2``): one
that gets SIGTERM closes its listener first (the kernel sends new connections
to the other), finishes its in-flight streams, then exits. The load generator
retries once when a connection fails before any byte of the response (as the
OpenAI client and clients behind a Kubernetes Service do): that covers a
request written onto a kept-alive connection in the instant the stopping
gateway closes it. Retries are counted apart and reported; failures must be 0.

The bridge of the serving instance drains on SIGTERM (stops pulling, finishes
its jobs, exits); the agent sees it gone and frees the slice, the gateway's held
requests publish demand, and the scaler starts a replacement that takes them.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest
from migserve_cli import stack as local_stack
from migserve_cli.procs import ProcessRef
from migserve_shared.messages import ModelSpec

from e2e.reliability_support import (
    Loaded,
    check_invariants,
    describe,
    restart_service,
    stack_home,
    truncated,
    under_load,
    up_leaving_nothing,
    wait_gone,
    wait_ready_instance,
    warm,
    warm_replaceable,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MODEL = "rollout/sim-model"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackFile]:
    home = tmp_path_factory.mktemp("rollout")
    opts = local_stack.StackOptions(
        home=home,
        engine="sim",
        models=[ModelSpec(model_id=MODEL, engine="sim", memory_mb=1024, tpot_slo_ms=200)],
        nodes=2,
        gateway_port=0,
        gateways=2,
        sim_engine_startup_s=0.2,
        metrics_source="direct",
        extra_env={"MIGSERVE_SHUTDOWN_GRACE_S": "20", "MIGSERVE_AGENT_WATCH_INTERVAL_S": "0.5"},
    )
    yield from up_leaving_nothing(opts)


@pytest.mark.parametrize(
    "names",
    [
        ["gateway", "gateway-2"],
        ["scaler"],
        ["metrics-watcher"],
        ["mig-agent-node-1", "mig-agent-node-2"],
    ],
    ids=["gateways", "scaler", "metrics-watcher", "mig-agents"],
)
async def test_sigterm_and_restart_drops_nothing(
    stack: local_stack.StackFile, names: list[str]
) -> None:
    await warm(stack, MODEL)
    before = await wait_ready_instance(stack.nats_url, MODEL)

    async def roll(out: Loaded) -> None:
        for name in names:
            r = await restart_service(stack_home(stack), name)
            out.notes[name] = (round(r.stopped_after_s, 2), round(r.ready_after_s, 2))
            await asyncio.sleep(0.5)

    out = await under_load(stack.gateway_url, MODEL, roll)
    report = out.report
    assert truncated(report) == [], describe(report)
    print(f"rollout {names}: {describe(report)}; stop/ready s: {out.notes}")
    assert report.failed == 0, describe(report)
    assert report.ok >= 8, describe(report)
    # the instance that served before still serves: no restart here touched it
    view = await check_invariants(stack_home(stack), demand_models=[MODEL])
    assert [i.instance_id for i in view.instances if i.model_id == MODEL] == [before.instance_id]


async def test_sigterm_bridge_drains_and_instance_is_replaced(
    stack: local_stack.StackFile,
) -> None:
    # the scaler replaces an instance on demand, but not within 30 s of its plan's end
    old, _ = await warm_replaceable(stack, MODEL)
    bridge = ProcessRef.of("bridge", old.bridge_pid)

    async def roll(out: Loaded) -> None:
        assert bridge.signal(signal.SIGTERM)
        out.notes["bridge_exit_s"] = round(await wait_gone(bridge, 30), 2)
        new = await wait_ready_instance(stack.nats_url, MODEL, not_ids=[old.instance_id])
        out.notes["replacement"] = new.instance_id

    out = await under_load(stack.gateway_url, MODEL, roll, settle_s=1.5)
    report = out.report
    assert truncated(report) == [], describe(report)
    print(f"rollout bridge: {describe(report)}; {out.notes}")
    assert report.failed == 0, describe(report)
    assert not ProcessRef.of("engine", old.engine_pid).alive()  # the agent stopped its engine
    view = await check_invariants(stack_home(stack), demand_models=[MODEL])
    assert old.instance_id not in {i.instance_id for i in view.instances}


def test_gateways_share_a_port_only_with_reuse_port() -> None:
    from migserve_gateway.server import bind
    from migserve_gateway.settings import settings_from_env
    from migserve_shared.errors import ConfigError

    assert settings_from_env({"MIGSERVE_GATEWAY_REUSE_PORT": "true"}).reuse_port
    assert not settings_from_env({}).reuse_port
    first = bind("127.0.0.1", 0, reuse_port=True)
    port = first.getsockname()[1]
    try:
        second = bind("127.0.0.1", port, reuse_port=True)
        second.close()
        first.listen()
        with pytest.raises(ConfigError, match="MIGSERVE_GATEWAY_PORT"):
            bind("127.0.0.1", port).close()
    finally:
        first.close()
