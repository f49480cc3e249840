"""The scaler's in-memory mirror of the models, nodes, instances and plans buckets.

Filled from KV watches at start (and kept current by them), refreshed key by
key when an event names something the decision needs, and updated directly
after the scaler's own plan writes. An entry older than what the store already
holds (by KV revision) is ignored, so a late watch update never rolls the view
back. Values that do not decode are logged, counted and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from migserve_shared import subjects
from migserve_shared.bus import Buckets, kv_values
from migserve_shared.errors import BadMessageError
from migserve_shared.ids import InvalidTokenError, decode_token
from migserve_shared.messages import (
    InstanceRecord,
    ModelSpec,
    NodeState,
    Plan,
    decode_instance,
    decode_model_spec,
    decode_node_state,
    decode_plan,
)
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from migserve_scaler.core import ClusterView, PlanEntry
from migserve_scaler.metrics import ScalerMetrics

log = logging.getLogger(__name__)

_DELETE_OPS = frozenset({"DEL", "PURGE"})

#: the buckets the view mirrors
WATCHED_BUCKETS = (subjects.KV_MODELS, subjects.KV_NODES, subjects.KV_INSTANCES, subjects.KV_PLANS)


class ViewStore:
    """Mutable maps the core reads through ``view()``."""

    def __init__(self, *, buckets: Buckets, metrics: ScalerMetrics) -> None:
        self._buckets = buckets
        self._metrics = metrics
        self.models: dict[str, ModelSpec] = {}
        self.nodes: dict[str, NodeState] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.plans: dict[str, PlanEntry] = {}
        self._revisions: dict[tuple[str, str], int] = {}
        self._appliers: dict[str, Callable[[str, bytes, int], None]] = {
            subjects.KV_MODELS: self._put_model,
            subjects.KV_NODES: self._put_node,
            subjects.KV_INSTANCES: self._put_instance,
            subjects.KV_PLANS: self._put_plan,
        }
        self._maps: dict[str, dict[str, Any]] = {
            subjects.KV_MODELS: self.models,
            subjects.KV_NODES: self.nodes,
            subjects.KV_INSTANCES: self.instances,
            subjects.KV_PLANS: self.plans,
        }

    def view(self) -> ClusterView:
        return ClusterView(
            models=self.models, nodes=self.nodes, instances=self.instances, plans=self.plans
        )

    # Applying KV entries ------------------------------------------------------
    def sink(self, bucket: str) -> Callable[[str, bytes | None, int], None]:
        """A callback that applies entries of ``bucket`` (for ``bus.follow_bucket``)."""

        def apply(key: str, value: bytes | None, revision: int) -> None:
            self.apply(bucket, key, value, revision, None)

        return apply

    def apply(
        self, bucket: str, key: str, value: bytes | None, revision: int, op: str | None
    ) -> None:
        """Apply one KV entry (a put, or a delete when ``op`` is DEL/PURGE)."""
        known = self._revisions.get((bucket, key), 0)
        if revision and revision < known:
            return
        if revision:
            self._revisions[bucket, key] = revision
        if op in _DELETE_OPS or not value:
            self._forget(bucket, key)
            return
        try:
            self._appliers[bucket](key, value, revision)
        except BadMessageError as exc:
            self._metrics.bad_messages.labels(bucket).inc()
            log.warning("ignoring bad value of %s/%s: %s", bucket, key, exc)

    def _forget(self, bucket: str, key: str) -> None:
        target = self._maps[bucket]
        try:
            name = decode_token(key)
        except InvalidTokenError:
            return
        target.pop(name, None)

    def _put_model(self, key: str, value: bytes, revision: int) -> None:
        spec = decode_model_spec(value)
        self.models[spec.model_id] = spec

    def _put_node(self, key: str, value: bytes, revision: int) -> None:
        state = decode_node_state(value)
        self.nodes[state.node] = state

    def _put_instance(self, key: str, value: bytes, revision: int) -> None:
        rec = decode_instance(value)
        self.instances[rec.instance_id] = rec

    def _put_plan(self, key: str, value: bytes, revision: int) -> None:
        plan = decode_plan(value)
        self.plans[plan.model_id] = PlanEntry(plan, revision)

    def wrote_plan(self, plan: Plan, revision: int) -> None:
        """Record the scaler's own successful plan write."""
        key = subjects.model_key(plan.model_id)
        self._revisions[subjects.KV_PLANS, key] = revision
        self.plans[plan.model_id] = PlanEntry(plan, revision)

    # Refreshing single keys ---------------------------------------------------------
    async def refresh(self, bucket: str, key: str) -> None:
        """Read one key again (after an event about it, or a refused plan write)."""
        kv = self.kv(bucket)
        try:
            entry = await kv.get(key)
        except KeyDeletedError as exc:
            revision = (exc.entry.revision or 0) if exc.entry is not None else 0
            self.apply(bucket, key, None, revision, "DEL")
            return
        except KeyNotFoundError:
            self.apply(bucket, key, None, 0, "DEL")
            return
        self.apply(bucket, key, entry.value, entry.revision or 0, entry.operation)

    async def reload(self, bucket: str) -> None:
        """Read every live key of ``bucket`` again (a new leader, before it acts)."""
        for key, value, revision in await kv_values(self.kv(bucket)):
            self.apply(bucket, key, value, revision, None)

    def kv(self, bucket: str) -> KeyValue:
        """The bucket named ``bucket`` (one of ``WATCHED_BUCKETS``)."""
        b = self._buckets
        by_name: dict[str, KeyValue] = {
            subjects.KV_MODELS: b.models,
            subjects.KV_NODES: b.nodes,
            subjects.KV_INSTANCES: b.instances,
            subjects.KV_PLANS: b.plans,
        }
        return by_name[bucket]
