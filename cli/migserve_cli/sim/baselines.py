"""The policies ours is compared with.

- ``whole-gpu``: every model gets whole GPUs (a 7g slice, no MIG changes), a
  fixed number of replicas each (default 1), running from time 0.
- ``static``: a fixed MIG partition running from time 0 (the hindsight search
  in ``hindsight.py`` chooses it).
- ``hpa``: replica-only autoscaling on whole GPUs, like a Kubernetes HPA on an
  in-flight-requests metric: every ``hpa_sync_s`` desired replicas =
  ceil(in flight / target) with in flight = requests holding a slot or
  waiting, target = half the slots of a whole-GPU replica unless set; at least
  1 (and the model's min_replicas), at most its max_replicas and the free
  GPUs. Up at once; down only to the highest desired count of the last
  ``hpa_downscale_window_s`` (the HPA's scale-down stabilisation, 300 s).
  A new replica takes the engine start time; no MIG operation is involved.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from migserve_shared import mig
from migserve_shared.errors import ConfigError
from migserve_shared.messages import Event, SloEvidence

from migserve_cli.sim.config import slots_for
from migserve_cli.sim.simulator import Simulator


@dataclass(frozen=True, slots=True)
class SlicePlacement:
    """One slice of a static layout: a model's instance on a GPU at a start."""

    model: str
    gpu: int
    profile: str
    start: int


class _Passive:
    """Ignores what a static policy does not react to."""

    def on_tick(self, sim: Simulator) -> None:
        return None

    def on_window(self, sim: Simulator, evidence: Mapping[str, SloEvidence]) -> None:
        return None

    def on_demand(self, sim: Simulator, model_id: str, waiting: int) -> None:
        return None

    def on_agent_event(self, sim: Simulator, event: Event) -> None:
        return None


class StaticController(_Passive):
    """A fixed layout, created before the first request (no cold start)."""

    def __init__(self, name: str, layout: Sequence[SlicePlacement], *, mig: bool = True) -> None:
        self.name = name
        self.layout = tuple(layout)
        self.mig = mig

    def start(self, sim: Simulator) -> None:
        for i, place in enumerate(self.layout):
            sim.agent.create(
                instance_id=f"static-{i}",
                model_id=place.model,
                gpu=place.gpu,
                profile=place.profile,
                start=place.start,
                prewarmed=True,
                mig=self.mig,
            )


def whole_gpu_layout(
    models: Sequence[str], gpu: mig.GpuModel, *, replicas: int, gpus: int
) -> list[SlicePlacement]:
    """One whole GPU (its 7-compute-slice profile) per model replica."""
    need = len(models) * replicas
    if need > gpus:
        raise ConfigError(
            f"whole-GPU serving needs {need} GPUs ({len(models)} models x {replicas}); "
            f"the cluster has {gpus}"
        )
    full = gpu.by_size()[-1].name
    return [
        SlicePlacement(model, i * replicas + r, full, 0)
        for i, model in enumerate(models)
        for r in range(replicas)
    ]


class HpaController(_Passive):
    """Replica-only autoscaling on whole GPUs (see the module doc)."""

    name = "hpa"

    def __init__(self, *, target_in_flight: float = 0.0) -> None:
        self.target = target_in_flight
        self._last_sync = -math.inf
        self._desired: dict[str, deque[tuple[float, int]]] = {}
        self._count = 0
        self.full = ""

    def start(self, sim: Simulator) -> None:
        self.full = sim.cluster.model.by_size()[-1].name
        for model in sim.models.values():
            for _ in range(max(1, model.spec.min_replicas)):
                self._add(sim, model.model_id, prewarmed=True)

    def _replicas(self, sim: Simulator, model: str) -> list[str]:
        return sorted(
            (
                i.instance_id
                for i in sim.instances.values()
                if i.model == model and i.status in ("creating", "starting", "ready")
            ),
            key=lambda name: int(name.rsplit("-", 1)[1]),
        )

    def _add(self, sim: Simulator, model: str, *, prewarmed: bool = False) -> bool:
        free = next((g for g, s in enumerate(sim.cluster.slices) if not s), None)
        if free is None:
            return False
        self._count += 1
        sim.agent.create(
            instance_id=f"hpa-{self._count}",
            model_id=model,
            gpu=free,
            profile=self.full,
            start=0,
            prewarmed=prewarmed,
            mig=False,
        )
        return True

    def on_tick(self, sim: Simulator) -> None:
        if sim.now - self._last_sync < sim.config.hpa_sync_s:
            return
        self._last_sync = sim.now
        profile = sim.cluster.model.profile(self.full)
        for model_id, model in sim.models.items():
            in_flight = len(sim.queues[model_id]) + sum(
                i.in_use for i in sim.instances.values() if i.model == model_id
            )
            target = self.target or max(1.0, slots_for(model, profile) / 2)
            low = max(1, model.spec.min_replicas)
            desired = min(max(low, math.ceil(in_flight / target)), model.spec.max_replicas)
            history = self._desired.setdefault(model_id, deque())
            history.append((sim.now, desired))
            while history and history[0][0] < sim.now - sim.config.hpa_downscale_window_s:
                history.popleft()
            stable = max(d for _, d in history)
            replicas = self._replicas(sim, model_id)
            for _ in range(desired - len(replicas)):
                if not self._add(sim, model_id):
                    break
            for instance_id in reversed(replicas[stable:]):
                sim.agent.retire(instance_id)
