"""Publishes the node's state: the nodes KV bucket always, a node.inventory event on change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from migserve_shared.bus import EventPublisher
from migserve_shared.messages import EngineKind, NodeInventory, NodeState, now
from nats.js.kv import KeyValue

from migserve_agent.core import build_node_state, same_inventory
from migserve_agent.slices import SliceManager
from migserve_agent.store import publish_node_state

log = logging.getLogger(__name__)


class Inventory:
    """The node's inventory publisher (one refresh at a time)."""

    def __init__(
        self,
        *,
        node: str,
        agent_id: str,
        gpu_backend: str,
        runtime: str,
        engines: Sequence[str],
        slices: SliceManager,
        nodes_kv: KeyValue,
        events: EventPublisher,
    ) -> None:
        self._node = node
        self._agent_id = agent_id
        self._gpu_backend = gpu_backend
        self._runtime = runtime
        self._engines = [cast(EngineKind, e) for e in engines]
        self._slices = slices
        self._kv = nodes_kv
        self._events = events
        self._lock = asyncio.Lock()
        self._last_evented: NodeState | None = None

    @property
    def last(self) -> NodeState | None:
        return self._last_evented

    async def refresh(self, trace_id: str = "") -> NodeState:
        """Read the GPUs, write the node state, event it if it changed."""
        async with self._lock:
            state = build_node_state(
                node=self._node,
                agent_id=self._agent_id,
                gpu_backend=self._gpu_backend,
                runtime=self._runtime,
                engines=self._engines,
                gpus=await self._slices.layout(),
                owned={o.uuid: o for o in self._slices.ownership.all()},
                now=now(),
            )
            await publish_node_state(self._kv, state)
            if not same_inventory(self._last_evented, state):
                await self._events.publish(NodeInventory(node=state, trace_id=trace_id))
                self._last_evented = state
            return state
