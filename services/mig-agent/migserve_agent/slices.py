"""Slice changes on this node: one at a time per GPU, recorded as ours, evented.

Backend calls block (NVML), so they run in a thread; slice changes on one GPU
are serialized (NVML placement is order dependent and the agent plans each
placement explicitly), different GPUs change in parallel. Only slices recorded
in the ownership file are ever destroyed, and only if the GPU instance id
still carries the UUID we recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from migserve_shared.bus import EventPublisher
from migserve_shared.errors import InUseError, MigserveError, NotFoundError
from migserve_shared.messages import SliceCreated, SliceDestroyed, now

from migserve_agent.gpu.base import GpuBackend, GpuInfo, OwnedSlice, SliceInfo
from migserve_agent.gpu.ownership import SliceOwnership
from migserve_agent.locks import KeyedLocks
from migserve_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

OnChange = Callable[[str], Awaitable[None]]


class SliceManager:
    """Creates and destroys this node's slices."""

    def __init__(
        self,
        *,
        node: str,
        backend: GpuBackend,
        ownership: SliceOwnership,
        events: EventPublisher,
        metrics: AgentMetrics,
        on_change: OnChange,
        in_use_retries: int = 25,
        in_use_delay_s: float = 0.2,
    ) -> None:
        self._node = node
        self._backend = backend
        self._ownership = ownership
        self._events = events
        self._metrics = metrics
        self._on_change = on_change
        self._in_use_retries = in_use_retries
        self._in_use_delay_s = in_use_delay_s
        self._gpu_locks = KeyedLocks()

    @property
    def ownership(self) -> SliceOwnership:
        return self._ownership

    async def gpu(self, index: int) -> GpuInfo:
        for gpu in await asyncio.to_thread(self._backend.list_gpus):
            if gpu.index == index:
                return gpu
        raise NotFoundError(f"node {self._node} has no GPU with index {index}")

    async def layout(self) -> list[tuple[GpuInfo, list[SliceInfo]]]:
        """Every GPU with its slices."""

        def read() -> list[tuple[GpuInfo, list[SliceInfo]]]:
            return [(g, self._backend.list_slices(g.index)) for g in self._backend.list_gpus()]

        return await asyncio.to_thread(read)

    async def create(
        self, *, gpu_index: int, profile: str, start: int, instance_id: str, trace_id: str
    ) -> SliceInfo:
        async with self._gpu_locks.hold(gpu_index):
            gpu = await self.gpu(gpu_index)
            try:
                info = await asyncio.to_thread(
                    self._backend.create_slice, gpu_index, profile, start
                )
            except MigserveError as exc:
                self._metrics.slice_ops.labels("create", exc.code.value).inc()
                raise
            self._ownership.record(
                OwnedSlice(
                    uuid=info.uuid,
                    gpu_index=gpu_index,
                    gpu_uuid=gpu.uuid,
                    gi_id=info.gi_id,
                    profile=info.profile,
                    start=info.start,
                    instance_id=instance_id,
                    created=now(),
                )
            )
        self._metrics.slice_ops.labels("create", "ok").inc()
        log.info("created slice %s at %d on GPU %d (%s)", info.profile, info.start, gpu_index,
                 info.uuid)  # fmt: skip
        await self._events.publish(
            SliceCreated(
                node=self._node,
                gpu_index=gpu_index,
                profile=info.profile,
                start=info.start,
                slice_uuid=info.uuid,
                instance_id=instance_id,
                trace_id=trace_id,
            )
        )
        await self._on_change(trace_id)
        return info

    async def destroy(self, owned: OwnedSlice, *, reason: str, trace_id: str) -> None:
        """Destroy one of our slices (retrying while its processes exit)."""
        async with self._gpu_locks.hold(owned.gpu_index):
            current = await self._find(owned)
            if current is None:
                log.warning("slice %s (GPU %d GI %d) is already gone; forgetting it", owned.uuid,
                            owned.gpu_index, owned.gi_id)  # fmt: skip
                self._ownership.forget(owned.uuid)
                return
            await self._destroy_with_retries(owned)
            self._ownership.forget(owned.uuid)
        self._metrics.slice_ops.labels("destroy", "ok").inc()
        log.info("destroyed slice %s at %d on GPU %d (%s): %s", owned.profile, owned.start,
                 owned.gpu_index, owned.uuid, reason)  # fmt: skip
        await self._events.publish(
            SliceDestroyed(
                node=self._node,
                gpu_index=owned.gpu_index,
                profile=owned.profile,
                start=owned.start,
                slice_uuid=owned.uuid,
                instance_id=owned.instance_id,
                reason=reason,
                trace_id=trace_id,
            )
        )
        await self._on_change(trace_id)

    async def _find(self, owned: OwnedSlice) -> SliceInfo | None:
        try:
            slices = await asyncio.to_thread(self._backend.list_slices, owned.gpu_index)
        except NotFoundError:
            return None
        for s in slices:
            if s.gi_id == owned.gi_id:
                # no UUID: our GPU instance whose compute instance is already gone
                bare = not s.uuid and (s.profile, s.start) == (owned.profile, owned.start)
                return s if s.uuid == owned.uuid or bare else None
        return None

    async def _destroy_with_retries(self, owned: OwnedSlice) -> None:
        for attempt in range(self._in_use_retries + 1):
            try:
                await asyncio.to_thread(self._backend.destroy_slice, owned.gpu_index, owned.gi_id)
                return
            except InUseError:
                if attempt == self._in_use_retries:
                    self._metrics.slice_ops.labels("destroy", "in_use").inc()
                    raise
                await asyncio.sleep(self._in_use_delay_s)
            except MigserveError as exc:
                self._metrics.slice_ops.labels("destroy", exc.code.value).inc()
                raise
