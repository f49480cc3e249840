"""The agent's KV state: its node's NodeState and the InstanceRecords it owns.

Only the owning agent writes an instance's record. Writes are compare-and-set
on the revision the agent last wrote; if someone else wrote in between (an
operator, a stale agent), the agent logs it and writes again on top, because
the agent is the source of truth for what runs on its node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from migserve_shared import subjects
from migserve_shared.bus import kv_values
from migserve_shared.errors import BadMessageError
from migserve_shared.messages import InstanceRecord, NodeState, decode_instance, encode
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class InstanceStore:
    """The instances bucket, as seen by one node's agent."""

    def __init__(self, kv: KeyValue, *, node: str, on_bad_record: Callable[[], None]) -> None:
        self._kv = kv
        self._node = node
        self._on_bad_record = on_bad_record
        self._revisions: dict[str, int] = {}

    async def put(self, record: InstanceRecord) -> None:
        key = subjects.instance_key(record.instance_id)
        value = encode(record)
        last = self._revisions.get(record.instance_id)
        try:
            if last is None:
                revision = await self._kv.create(key, value)
            else:
                revision = await self._kv.update(key, value, last=last)
        except KeyWrongLastSequenceError:
            current = await self._current_revision(key)
            log.warning("instance record %s changed behind the agent's back (revision %s, "
                        "expected %s); overwriting", record.instance_id, current, last)  # fmt: skip
            if current:
                revision = await self._kv.update(key, value, last=current)
            else:
                revision = await self._kv.create(key, value)
        self._revisions[record.instance_id] = revision

    async def delete(self, instance_id: str) -> None:
        self._revisions.pop(instance_id, None)
        await self._kv.delete(subjects.instance_key(instance_id))

    async def get(self, instance_id: str) -> InstanceRecord | None:
        try:
            entry = await self._kv.get(subjects.instance_key(instance_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            record = decode_instance(entry.value)
        except BadMessageError as exc:
            self._on_bad_record()
            log.warning("instance record %s does not decode: %s", instance_id, exc)
            return None
        self._revisions[instance_id] = entry.revision or 0
        return record

    async def of_node(self) -> list[InstanceRecord]:
        """Every decodable record of this node (bad ones are counted and skipped)."""
        records = []
        for key, value, revision in await kv_values(self._kv):
            try:
                record = decode_instance(value)
            except BadMessageError as exc:
                self._on_bad_record()
                log.warning("instance record %s does not decode: %s", key, exc)
                continue
            if record.node == self._node:
                self._revisions[record.instance_id] = revision
                records.append(record)
        return records

    async def _current_revision(self, key: str) -> int:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return 0
        return entry.revision or 0


async def publish_node_state(kv: KeyValue, state: NodeState) -> None:
    """Write the node's state (this agent is the only writer of its key)."""
    await kv.put(subjects.node_key(state.node), encode(state))
