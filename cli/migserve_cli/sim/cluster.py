"""Simulated GPUs: MIG slices placed with the shared rules, and what they cost.

Every slice goes through ``migserve_shared.mig.check_place``, the same rule
the simulated GPU backend and the scaler use, so no policy can build a layout
the rules forbid (an attempt raises ``InsufficientResourcesError``). The
cluster also integrates usage over time: a GPU counts while any slice exists
on it (being created, serving or draining), a slice counts with its share of
the GPU's compute slices (c / 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migserve_shared import mig
from migserve_shared.messages import GpuState, NodeState, SliceState

from migserve_cli.sim.config import SimConfig


@dataclass(slots=True, eq=False)
class SliceRecord:
    """One slice's life on one GPU."""

    gpu: int
    profile: mig.Profile
    start: int
    instance_id: str
    model: str
    created_at: float
    gi_id: int
    destroyed_at: float | None = None


@dataclass(slots=True)
class _Usage:
    """Piecewise-constant usage: (time, GPUs in use, GPU fraction in slices) at each change."""

    points: list[tuple[float, int, float]] = field(default_factory=list)

    def integrate(self, until: float) -> tuple[float, float]:
        """(GPU-seconds, slice-seconds weighted by GPU fraction) from 0 to ``until``."""
        gpu_s = slice_s = 0.0
        for (t, gpus, frac), nxt in zip(self.points, [*self.points[1:], None], strict=True):
            end = min(until, nxt[0] if nxt is not None else until)
            if end > t:
                gpu_s += gpus * (end - t)
                slice_s += frac * (end - t)
        return gpu_s, slice_s


class SimCluster:
    """GPUs numbered 0..gpus-1 across nodes (``SimConfig.node_of``)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.model = config.mig_model
        self.slices: list[list[SliceRecord]] = [[] for _ in range(config.gpus)]
        self.history: list[SliceRecord] = []
        self._usage = _Usage([(0.0, 0, 0.0)])
        self._gi = 0
        self.layout_changes = 0

    def gpu_index(self, node: str, index: int) -> int | None:
        """The cluster-wide GPU number of (node, index), or None if there is no such GPU."""
        for g in range(self.config.gpus):
            if self.config.node_of(g) == (node, index):
                return g
        return None

    def layout(self, gpu: int) -> list[mig.Slice]:
        return [mig.Slice(s.profile.id, s.start) for s in self.slices[gpu]]

    def place(
        self, gpu: int, profile: str, start: int, *, instance_id: str, model: str, now: float
    ) -> SliceRecord:
        """Create a slice; raises InsufficientResourcesError/NotSupportedError like NVML."""
        prof = self.model.profile(profile)
        mig.check_place(self.model, self.layout(gpu), prof, start)
        self._gi += 1
        rec = SliceRecord(gpu, prof, start, instance_id, model, now, self._gi)
        self.slices[gpu].append(rec)
        self.history.append(rec)
        mig.validate_layout(self.model, self.layout(gpu))
        self._changed(now)
        return rec

    def remove(self, rec: SliceRecord, now: float) -> None:
        self.slices[rec.gpu].remove(rec)
        rec.destroyed_at = now
        self._changed(now)

    def _changed(self, now: float) -> None:
        self.layout_changes += 1
        gpus = sum(1 for s in self.slices if s)
        frac = sum(r.profile.compute_slices for s in self.slices for r in s) / mig.COMPUTE_SLICES
        pts = self._usage.points
        if pts and pts[-1][0] == now:
            pts[-1] = (now, gpus, frac)
        else:
            pts.append((now, gpus, frac))

    def usage(self, until: float) -> tuple[float, float]:
        """(GPU-hours, slice-hours) from 0 to ``until``."""
        gpu_s, slice_s = self._usage.integrate(until)
        return gpu_s / 3600.0, slice_s / 3600.0

    def peak_gpus(self) -> int:
        return max((g for _, g, _ in self._usage.points), default=0)

    def node_names(self) -> list[str]:
        return sorted({self.config.node_of(g)[0] for g in range(self.config.gpus)})

    def node_state(self, node: str, now: float) -> NodeState:
        """One node's entry in the nodes bucket, as its agent would write it."""
        gpus = [
            self.gpu_state(g) for g in range(self.config.gpus) if self.config.node_of(g)[0] == node
        ]
        return NodeState(node=node, gpus=gpus, engines=["sim", "vllm", "tgi"], updated=now)

    def gpu_state(self, gpu: int) -> GpuState:
        _, index = self.config.node_of(gpu)
        return GpuState(
            index=index,
            uuid=f"GPU-sim-{gpu:04d}",
            model=self.model.name,
            memory_mb=self.model.memory_mb,
            slices=[
                SliceState(
                    gi_id=s.gi_id,
                    profile_id=s.profile.id,
                    profile=s.profile.name,
                    start=s.start,
                    uuid=f"MIG-sim-{s.gi_id}",
                    instance_id=s.instance_id,
                    memory_mb=s.profile.memory_mb,
                    sm_count=s.profile.sm_count,
                )
                for s in sorted(self.slices[gpu], key=lambda s: s.start)
            ],
        )
