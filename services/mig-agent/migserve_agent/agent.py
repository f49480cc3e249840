"""The node agent: wires the backends, reconciles, then runs its loops until told to stop.

Start-up: JetStream streams and buckets, reconciliation (adopt what still runs,
clean up the rest), the node's inventory (KV + event), then three named loops:
the command consumer, the instance watcher (engine or bridge died: instance
failed, slice freed) and the periodic inventory. On stop, the agent stops
consuming and finishes the commands in hand; it never stops engines on the way
out (they outlive the agent, and the next agent adopts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from migserve_shared.bus import EventPublisher, ensure_jetstream, open_buckets
from migserve_shared.errors import ConfigError, ErrorCode
from migserve_shared.ids import new_id
from nats.aio.client import Client as NATS

from migserve_agent.commands import CommandConsumer
from migserve_agent.engines.registry import EngineRegistry, default_registry
from migserve_agent.gpu.base import GpuBackend
from migserve_agent.gpu.nvml import NvmlGpuBackend
from migserve_agent.gpu.ownership import SliceOwnership
from migserve_agent.gpu.simulated import SimulatedGpuBackend
from migserve_agent.instances import InstanceManager
from migserve_agent.inventory import Inventory
from migserve_agent.ledger import CommandLedger
from migserve_agent.metrics import AgentMetrics, slice_info_rows
from migserve_agent.reconcile import reconcile
from migserve_agent.runtime.base import Runtime
from migserve_agent.runtime.pod_settings import bridge_environment
from migserve_agent.runtime.process import ProcessRuntime
from migserve_agent.settings import AgentSettings
from migserve_agent.slices import SliceManager
from migserve_agent.store import InstanceStore

log = logging.getLogger(__name__)


def build_gpu_backend(settings: AgentSettings) -> GpuBackend:
    """The GPU backend the settings name: real GPUs through NVML, or simulated ones."""
    if settings.gpu_backend == "nvml":
        return NvmlGpuBackend(gpu_indices=settings.nvml_gpus)
    return SimulatedGpuBackend(
        settings.sim_gpus,
        state_file=settings.state_dir / "simulated-gpus.json",
        seed=f"{settings.node}@{settings.state_dir.resolve()}",
        config=settings.sim_gpu,
    )


def build_runtime(settings: AgentSettings) -> Runtime:
    """The ``process`` runtime (``open_runtime`` opens the others)."""
    if settings.runtime != "process":
        raise ConfigError(f"MIGSERVE_RUNTIME={settings.runtime} is opened by open_runtime()")
    return ProcessRuntime(
        state_dir=settings.state_dir,
        nats_url=settings.nats.url,
        engine_host=settings.engine_host,
        bridge_command=settings.bridge_command,
    )


async def open_runtime(settings: AgentSettings, stack: contextlib.AsyncExitStack) -> Runtime:
    """The runtime the settings name, ready to use; ``stack`` closes it."""
    if settings.runtime != "kubernetes":
        return build_runtime(settings)
    # imported here: the kubernetes client is the agent's optional "kubernetes" extra
    from migserve_agent.runtime import kubernetes

    nats = settings.nats
    if (nats.user or nats.creds_file) and not settings.pods.bridge_env_secret:
        log.warning("NATS credentials are not passed to engine pods; put them in a Secret "
                    "named by MIGSERVE_K8S_BRIDGE_ENV_SECRET")  # fmt: skip
    runtime = await kubernetes.open_runtime(
        settings.pods,
        node=settings.node,
        bridge_env=bridge_environment(
            nats_url=nats.url,
            js_replicas=nats.js_replicas,
            log_json=settings.log_json,
            log_level=settings.log_level,
        ),
    )
    stack.callback(runtime.close)
    return runtime


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``stop``; True once it is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return stop.is_set()
    return True


class Agent:
    """One node's agent."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        nc: NATS,
        backend: GpuBackend | None = None,
        runtime: Runtime | None = None,
        engines: EngineRegistry | None = None,
        metrics: AgentMetrics | None = None,
        in_use_retries: int = 25,
    ) -> None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.agent_id = f"{settings.node}-{new_id()[:8]}"
        self.metrics = metrics or AgentMetrics()
        self.backend = backend or build_gpu_backend(settings)
        self.runtime = runtime or build_runtime(settings)
        self.engines = engines or default_registry(
            sim_startup_s=settings.sim_engine_startup_s, llama_server=settings.llama_server
        )
        self.started = asyncio.Event()
        self._nc = nc
        self._in_use_retries = in_use_retries
        self._instances: InstanceManager | None = None
        self._slices: SliceManager | None = None
        self._inventory: Inventory | None = None

    @property
    def instances(self) -> InstanceManager:
        if self._instances is None:
            raise RuntimeError("the agent has not started")
        return self._instances

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            raise RuntimeError("the agent has not started")
        return self._inventory

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, finish the commands in hand."""
        s = self.settings
        js = self._nc.jetstream()
        await ensure_jetstream(js, replicas=s.nats.js_replicas)
        buckets = await open_buckets(js)
        events = EventPublisher(js, source=f"mig-agent/{s.node}")
        self._slices = SliceManager(
            node=s.node,
            backend=self.backend,
            ownership=SliceOwnership(s.state_dir / "owned-slices.json"),
            events=events,
            metrics=self.metrics,
            on_change=self._refresh_inventory,
            in_use_retries=self._in_use_retries,
        )
        self._inventory = Inventory(
            node=s.node,
            agent_id=self.agent_id,
            gpu_backend=self.backend.name,
            runtime=self.runtime.name,
            engines=self.engines.kinds(),
            slices=self._slices,
            nodes_kv=buckets.nodes,
            events=events,
        )
        store = InstanceStore(
            buckets.instances, node=s.node, on_bad_record=self.metrics.bad_records.inc
        )
        self._instances = InstanceManager(
            node=s.node,
            slices=self._slices,
            runtime=self.runtime,
            engines=self.engines,
            store=store,
            events=events,
            metrics=self.metrics,
            ready_timeout_s=s.ready_timeout_s,
        )
        self.metrics.show_slices(
            lambda: slice_info_rows(self.inventory.last, self.instances.records())
        )
        fixes = await reconcile(
            node=s.node,
            store=store,
            runtime=self.runtime,
            slices=self._slices,
            instances=self._instances,
            events=events,
            metrics=self.metrics,
        )
        await self._inventory.refresh()
        log.info("agent %s up: %d GPU(s), %d instance(s) adopted, %d failed at restart",
                 self.agent_id, len(self._inventory.last.gpus) if self._inventory.last else 0,
                 len(fixes.adopt), len(fixes.fail))  # fmt: skip
        consumer = CommandConsumer(
            js=js,
            node=s.node,
            instances=self._instances,
            ledger=CommandLedger(s.state_dir / "commands.json"),
            events=events,
            metrics=self.metrics,
            max_commands=s.max_commands,
            ack_wait_s=s.command_ack_wait_s,
            shutdown_timeout_s=s.shutdown_timeout_s,
            fetch_timeout_s=s.command_fetch_timeout_s,
            create_max_age_s=s.command_max_age_s,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(consumer.run(stop), name="agent-commands")
            tg.create_task(self._watch(stop), name="agent-watch")
            tg.create_task(self._inventory_loop(stop), name="agent-inventory")
            self.started.set()
        log.info("agent %s stopped; engines keep running", self.agent_id)

    def close(self) -> None:
        self.backend.close()

    async def _refresh_inventory(self, trace_id: str) -> None:
        await self.inventory.refresh(trace_id)

    async def _inventory_loop(self, stop: asyncio.Event) -> None:
        while not await _stopped(stop, self.settings.inventory_interval_s):
            try:
                await self.inventory.refresh()
            except Exception as exc:
                log.warning("publishing the inventory failed: %r", exc)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Fail instances whose engine or bridge died; destroy our slices nobody uses."""
        while not await _stopped(stop, self.settings.watch_interval_s):
            try:
                await self._check_instances()
                await self._sweep_orphan_slices()
            except Exception as exc:
                log.warning("watching instances failed: %r", exc)

    async def _check_instances(self) -> None:
        for record in self.instances.records():
            if record.state not in ("ready", "draining") or self.instances.busy(record.instance_id):
                continue
            liveness = self.runtime.liveness(record.instance_id)
            if not liveness.alive:
                await self.instances.fail(
                    record.instance_id, reason=liveness.describe(), code=ErrorCode.ENGINE_FAILED
                )

    async def _sweep_orphan_slices(self) -> None:
        assert self._slices is not None
        running = {r.instance_id for r in self.instances.records()}
        for owned in self._slices.ownership.all():
            if owned.instance_id in running or self.instances.busy(owned.instance_id):
                continue
            await self._slices.destroy(
                owned, reason=f"no instance uses it (made for {owned.instance_id})", trace_id=""
            )
