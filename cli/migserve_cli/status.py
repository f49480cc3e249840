"""`migserve status`: nodes, GPUs with their slice layout, instances and models."""

from __future__ import annotations

from typing import Any

import msgspec
from migserve_scaler.leader import decode_lease
from migserve_shared import subjects
from migserve_shared.bus import connect, kv_values, open_buckets
from migserve_shared.env import NatsSettings, redact_url
from migserve_shared.messages import (
    InstanceRecord,
    ModelSpec,
    NodeState,
    Plan,
    decode_instance,
    decode_model_spec,
    decode_node_state,
    decode_plan,
    now,
)
from migserve_shared.mig import Slice, gpu_model, render_bar
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue


class ClusterView(msgspec.Struct, kw_only=True):
    nats_url: str
    gateway_url: str = ""
    metrics_source: str = ""
    #: the scaler replica holding the leader lease, with its term ("" when none)
    scaler_leader: str = ""
    models: list[ModelSpec]
    nodes: list[NodeState]
    instances: list[InstanceRecord]
    plans: list[Plan]


async def read_cluster(nats: str | NatsSettings, gateway_url: str = "") -> ClusterView:
    """The cluster as the KV buckets say; ``nats`` is a URL or settings with credentials
    (the URL shown is redacted: no password ever reaches the output)."""
    settings = NatsSettings(url=nats, name="migserve-status") if isinstance(nats, str) else nats
    nc = await connect(settings, connect_timeout=3)
    try:
        b = await open_buckets(nc.jetstream())
        return ClusterView(
            nats_url=redact_url(settings.url),
            gateway_url=gateway_url,
            models=[decode_model_spec(v) for _, v, _ in await kv_values(b.models)],
            nodes=sorted(
                (decode_node_state(v) for _, v, _ in await kv_values(b.nodes)),
                key=lambda n: n.node,
            ),
            instances=sorted(
                (decode_instance(v) for _, v, _ in await kv_values(b.instances)),
                key=lambda i: (i.node, i.gpu_index, i.start),
            ),
            plans=[decode_plan(v) for _, v, _ in await kv_values(b.plans)],
            scaler_leader=await _scaler_leader(b.leader),
        )
    finally:
        await nc.close()


async def _scaler_leader(kv: KeyValue) -> str:
    """Who holds the scaler lease, from the lease record (its holder's own clock)."""
    try:
        entry = await kv.get(subjects.SCALER_LEASE_KEY)
    except KeyNotFoundError:
        return ""
    try:
        lease = decode_lease(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "(unreadable lease)"
    if not lease.holder:
        return ""
    silent = now() - lease.renewed
    if silent > lease.ttl_s:  # by the wall clocks of two hosts: a hint, not a verdict
        return f"{lease.holder} (term {lease.term}, not renewed for {silent:.0f} s)"
    return f"{lease.holder} (term {lease.term})"


def as_json(view: ClusterView) -> bytes:
    return msgspec.json.format(msgspec.json.encode(view))


def _short(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def render(view: ClusterView) -> str:
    lines: list[str] = []
    lines.append(f"gateway  {view.gateway_url or '-'}")
    lines.append(f"nats     {view.nats_url}")
    if view.metrics_source:
        lines.append(f"metrics  {view.metrics_source}")
    lines.append(f"scaler   {view.scaler_leader or '(no leader)'}")
    lines.append("")
    by_slice = {(i.node, i.gpu_index, i.start): i for i in view.instances}
    lines.append("NODES (each bar is the GPU's 8 memory slices)")
    if not view.nodes:
        lines.append("  (no node has reported)")
    for node in view.nodes:
        lines.append(f"  {node.node}  gpu backend {node.gpu_backend}, runtime {node.runtime}")
        for gpu in node.gpus:
            try:
                model = gpu_model(gpu.model)
            except Exception:
                lines.append(f"    gpu {gpu.index} {gpu.model}: not MIG-capable")
                continue
            labels: dict[int, str] = {}
            for s in gpu.slices:
                inst = by_slice.get((node.node, gpu.index, s.start))
                labels[s.start] = f"{s.profile} {_short(inst.model_id)}" if inst else s.profile
            bar = render_bar(model, [Slice(s.profile_id, s.start) for s in gpu.slices], labels)
            mig = "" if gpu.mig_enabled else "  (MIG OFF)"
            lines.append(f"    gpu {gpu.index} {gpu.model:<15} {bar}{mig}")
    lines.append("")
    lines.append("INSTANCES")
    if not view.instances:
        lines.append("  (none)")
    for i in view.instances:
        lines.append(
            f"  {i.instance_id:<40} {i.state:<9} {i.model_id}  {i.node}/gpu{i.gpu_index} "
            f"{i.profile}@{i.start}  engine {i.engine} {i.engine_url}"
        )
    lines.append("")
    lines.append("MODELS")
    plans = {p.model_id: p for p in view.plans}
    for m in view.models:
        plan = plans.get(m.model_id)
        ready = sum(1 for i in view.instances if i.model_id == m.model_id and i.state == "ready")
        p = f"  plan {plan.action} {plan.status}" if plan else ""
        lines.append(
            f"  {m.model_id:<45} engine {m.engine:<8} SLO {m.tpot_slo_ms:g} ms/token  "
            f"ready {ready}{p}"
        )
    if not view.models:
        lines.append("  (none registered)")
    return "\n".join(lines)


def to_dict(view: ClusterView) -> dict[str, Any]:
    return msgspec.to_builtins(view)  # type: ignore[no-any-return]
