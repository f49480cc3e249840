"""Start-up reconciliation: make the node match its records, and event every correction.

Instances recorded in KV for this node whose engine and bridge still run are
adopted; the others are removed (instance.failed with the reason) and their
processes stopped. Slices migserve made that no adopted instance uses are
destroyed (slice.destroyed); slices that are not ours are left alone.
"""

from __future__ import annotations

import logging

from migserve_shared.bus import EventPublisher
from migserve_shared.logs import log_context
from migserve_shared.messages import InstanceStopped, now

from migserve_agent.core import Corrections, plan_reconcile
from migserve_agent.gpu.base import OwnedSlice
from migserve_agent.instances import InstanceManager
from migserve_agent.metrics import AgentMetrics
from migserve_agent.runtime.base import Runtime
from migserve_agent.slices import SliceManager
from migserve_agent.store import InstanceStore

log = logging.getLogger(__name__)


async def reconcile(
    *,
    node: str,
    store: InstanceStore,
    runtime: Runtime,
    slices: SliceManager,
    instances: InstanceManager,
    events: EventPublisher,
    metrics: AgentMetrics,
    drain_timeout_s: float = 5.0,
) -> Corrections:
    """Observe, decide (``core.plan_reconcile``), correct."""
    records = await store.of_node()
    running = {r.instance_id for r in records if runtime.adopt(r) is not None}
    known = runtime.known()
    layout = await slices.layout()
    fixes = plan_reconcile(
        records=records,
        running=running,
        slices=[s for _, gpu_slices in layout for s in gpu_slices],
        owned=slices.ownership.all(),
        runtime_known=known,
    )
    traces = {r.instance_id: r.trace_id for r in records}
    recorded = {r.instance_id for r in records}

    for instance_id in fixes.stop_processes:
        log.warning("stopping processes of instance %s left from before the restart", instance_id)
        await runtime.stop(instance_id, drain_timeout_s=drain_timeout_s)
        metrics.reconcile_corrections.labels("stop_processes").inc()
        if instance_id not in recorded:  # no record to fail: say what happened
            await events.publish(
                InstanceStopped(
                    instance_id=instance_id,
                    model_id=known[instance_id] or "unknown",
                    node=node,
                    reason="processes without an instance record stopped at agent start",
                )
            )
    for owned, reason in fixes.destroy:
        await slices.destroy(owned, reason=reason, trace_id=traces.get(owned.instance_id, ""))
        metrics.reconcile_corrections.labels("destroy_slice").inc()
    for owned in fixes.forget:
        log.warning("slice %s made for %s no longer exists; forgetting it", owned.uuid,
                    owned.instance_id)  # fmt: skip
        slices.ownership.forget(owned.uuid)
        metrics.reconcile_corrections.labels("forget_slice").inc()
    for record, info in fixes.reown:
        log.warning("slice %s of instance %s was missing from the ownership file; recorded",
                    info.uuid, record.instance_id)  # fmt: skip
        slices.ownership.record(
            OwnedSlice(
                uuid=info.uuid,
                gpu_index=info.gpu_index,
                gpu_uuid=record.gpu_uuid,
                gi_id=info.gi_id,
                profile=info.profile,
                start=info.start,
                instance_id=record.instance_id,
                created=now(),
            )
        )
        metrics.reconcile_corrections.labels("reown_slice").inc()
    for record, reason in fixes.fail:
        with log_context(trace_id=record.trace_id, model=record.model_id):
            log.warning("instance %s cannot be adopted: %s", record.instance_id, reason)
            await instances.remove_stale(record, reason=reason)
        metrics.reconcile_corrections.labels("fail_instance").inc()
    for record in fixes.adopt:
        with log_context(trace_id=record.trace_id, model=record.model_id):
            log.info("adopted instance %s (%s)", record.instance_id, record.state)
        instances.adopt(record)
    return fixes
