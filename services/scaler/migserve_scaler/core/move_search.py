"""The search behind ``defrag.plan_moves``: the cluster as classes of identical GPUs,
the layout after some moves, and a depth-first search over the moves that can
matter for one target (GPU, profile, start):

* any movable slice on the target GPU, to any legal place: the target GPU
  itself, a GPU the plan already touched, or the first GPU of each class of
  untouched GPUs with the same layout (those are interchangeable);
* with one move to spare, a slice on another GPU whose removal opens a place
  for a slice of the target GPU (a chain); with two or more to spare, any
  movable slice.

``layouts.moves_needed`` (the slices in the way) bounds every branch, and a
branch with no move to spare stops as soon as a slice in the way has nowhere
to go. Every legality question goes to ``mig`` through ``layouts``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from migserve_shared import mig
from migserve_shared.errors import NotSupportedError
from migserve_shared.messages import InstanceRecord, NodeState

from migserve_scaler.core.layouts import (
    Layout,
    layout_free_starts,
    moves_needed,
    opens_room,
    preference,
    profile_ids,
    rooms_on,
)
from migserve_scaler.core.placement import Reservation, gpu_layout

GpuKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Move:
    """Move a ready instance to a new slice of the same profile (make-before-break)."""

    instance_id: str
    model_id: str
    node: str
    gpu_index: int
    profile: str
    start: int
    from_node: str
    from_gpu_index: int
    from_start: int


#: (GPU model name, layout, starts of movable slices): GPUs with equal keys are interchangeable
ClassKey = tuple[str, Layout, frozenset[int]]


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU's layout and which of its slices may move (start -> instance)."""

    model: mig.GpuModel
    layout: Layout
    movers: Mapping[int, InstanceRecord]

    def class_key(self) -> ClassKey:
        return self.model.name, self.layout, frozenset(self.movers)

    def pid_at(self, start: int) -> int:
        return next(pid for pid, st in self.layout if st == start)

    def without(self, start: int) -> Gpu:
        layout = frozenset(x for x in self.layout if x[1] != start)
        movers = {k: v for k, v in self.movers.items() if k != start}
        return Gpu(self.model, layout, movers)

    def with_slice(self, profile_id: int, start: int, mover: InstanceRecord) -> Gpu:
        return Gpu(self.model, self.layout | {(profile_id, start)}, {**self.movers, start: mover})


@dataclass(frozen=True, slots=True)
class Goal:
    key: GpuKey
    profile: mig.Profile
    start: int


class Cluster:
    """The GPUs that can take MIG slices, grouped into classes of identical layouts."""

    def __init__(
        self,
        nodes: Iterable[NodeState],
        instances: Iterable[InstanceRecord],
        reserved: Mapping[GpuKey, Sequence[Reservation]],
    ) -> None:
        self.ready: dict[GpuKey, list[InstanceRecord]] = {}
        for r in instances:
            if r.state == "ready":
                self.ready.setdefault((r.node, r.gpu_index), []).append(r)
        #: GPU -> its class; GPU -> how many slices ``used_slices`` lists
        self.class_of: dict[GpuKey, ClassKey] = {}
        self.used_count: dict[GpuKey, int] = {}
        #: class members in (node, index) order
        self.classes: dict[ClassKey, list[GpuKey]] = {}
        for node in sorted(nodes, key=lambda n: n.node):
            for gpu in sorted(node.gpus, key=lambda g: g.index):
                if not gpu.mig_enabled:
                    continue
                try:
                    model = mig.gpu_model(gpu.model)
                except NotSupportedError:
                    continue
                key = (node.node, gpu.index)
                layout, count = gpu_layout(model, gpu, reserved.get(key, ()))
                ids = profile_ids(model.name)
                movable = frozenset(
                    rec.start
                    for rec in self.ready.get(key, ())
                    if (ids.get(rec.profile), rec.start) in layout
                )
                ck = (model.name, layout, movable)
                members = self.classes.get(ck)
                if members is None:
                    self.classes[ck] = [key]
                else:
                    ck = self.class_of[members[0]]  # one key object per class
                    members.append(key)
                self.class_of[key] = ck
                self.used_count[key] = count
        self._gpus: dict[GpuKey, Gpu] = {}
        self._rooms: dict[tuple[str, int], list[tuple[tuple[int, ...], ClassKey, int]]] = {}

    def gpu(self, key: GpuKey) -> Gpu:
        """The GPU as it is now (built when first asked for)."""
        gpu = self._gpus.get(key)
        if gpu is None:
            name, layout, _ = self.class_of[key]
            ids = profile_ids(name)
            movers = {
                r.start: r
                for r in self.ready.get(key, ())
                if (ids.get(r.profile), r.start) in layout
            }
            gpu = self._gpus[key] = Gpu(mig.gpu_model(name), layout, movers)
        return gpu

    def rooms(self, model_name: str, pid: int) -> list[tuple[tuple[int, ...], ClassKey, int]]:
        """(preference, class, start) of every free place for ``pid``, best first."""
        found = self._rooms.get((model_name, pid))
        if found is None:
            found = [
                (pref, ck, st)
                for ck, keys in self.classes.items()
                if ck[0] == model_name
                for pref, st in rooms_on(model_name, ck[1], pid)
            ]
            found.sort(key=lambda r: (r[0], self.classes[r[1]][0], r[2]))
            self._rooms[model_name, pid] = found
        return found


class State:
    """The cluster after some moves: an overlay of the GPUs the moves touched."""

    __slots__ = ("cluster", "touched")

    def __init__(self, cluster: Cluster, touched: Mapping[GpuKey, Gpu]) -> None:
        self.cluster = cluster
        self.touched = touched

    def gpu(self, key: GpuKey) -> Gpu:
        gpu = self.touched.get(key)
        return self.cluster.gpu(key) if gpu is None else gpu

    def apply(self, move: Move) -> State:
        src = (move.from_node, move.from_gpu_index)
        dst = (move.node, move.gpu_index)
        old = self.gpu(src)
        pid, mover = old.pid_at(move.from_start), old.movers[move.from_start]
        touched = dict(self.touched)
        touched[dst] = self.gpu(dst).with_slice(pid, move.start, mover)
        touched[src] = (touched[src] if src in touched else self.gpu(src)).without(move.from_start)
        return State(self.cluster, touched)

    def need(self, goal: Goal) -> int | None:
        g = self.gpu(goal.key)
        return moves_needed(
            g.model.name, g.layout, frozenset(g.movers), goal.profile.id, goal.start
        )

    def others(self, model_name: str, special: set[GpuKey]) -> Iterator[GpuKey]:
        """One GPU per class of ``model_name`` outside ``special`` (the first in node order)."""
        for ck, keys in self.cluster.classes.items():
            if ck[0] == model_name:
                member = next((k for k in keys if k not in special), None)
                if member is not None:
                    yield member


class Search:
    """Depth-first search for the moves that free one goal, over a cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def solve(self, goal: Goal, budget: int, *, failed_below: bool) -> list[Move] | None:
        """Moves (at most ``budget``) after which ``goal`` is free, or None.

        ``failed_below``: the goal has no plan of ``budget - 1`` moves. With a
        budget of 2 and one move to spare, the first move's place on an
        untouched GPU then cannot matter (the last move cannot use that GPU:
        it gained a slice), so only the best such place is tried.
        """
        lean = failed_below and budget == 2
        return self._dfs(State(self.cluster, {}), goal, budget, lean=lean)

    def _dfs(self, state: State, goal: Goal, budget: int, *, lean: bool) -> list[Move] | None:
        need = state.need(goal)
        if need is None or need > budget:
            return None
        if need == 0:
            return []
        spare = budget - need
        if spare == 0 and not self._blockers_can_leave(state, goal):
            return None
        for move in self._candidates(state, goal, spare, lean=lean and spare == 1):
            rest = self._dfs(state.apply(move), goal, budget - 1, lean=False)
            if rest is not None:
                return [move, *rest]
        return None

    def _blockers_can_leave(self, state: State, goal: Goal) -> bool:
        """Whether every slice in the goal's way has somewhere to go (a quick necessary test)."""
        target = state.gpu(goal.key)
        name = target.model.name
        region = goal.profile.mask(goal.start)
        profile = target.model.profile
        blockers = {x for x in target.layout if profile(x[0]).mask(x[1]) & region}
        rest = target.layout - blockers
        special = {goal.key} | state.touched.keys()
        for pid, _ in blockers:
            mask = profile(pid).mask
            if any(not mask(st) & region for st in layout_free_starts(name, rest, pid)):
                continue
            if any(
                layout_free_starts(name, g.layout, pid)
                for k, g in state.touched.items()
                if k != goal.key and g.model.name == name
            ):
                continue
            if any(
                any(k not in special for k in self.cluster.classes[ck])
                for _, ck, _ in self.cluster.rooms(name, pid)
            ):
                continue
            return False
        return True

    def _candidates(self, state: State, goal: Goal, spare: int, *, lean: bool) -> Iterator[Move]:
        """Moves of the target's slices (blockers first), then chain moves if one is spare.

        ``lean``: offer only the best place on an untouched GPU for each slice.
        """
        target = state.gpu(goal.key)
        region = goal.profile.mask(goal.start)
        profile = target.model.profile

        def blocks(start: int) -> bool:
            return bool(profile(target.pid_at(start)).mask(start) & region)

        for start in sorted(target.movers, key=lambda st: (not blocks(st), st)):
            yield from self._moves_of(state, goal, goal.key, start, lean=lean)
        if spare <= 0:
            return
        name = target.model.name
        wanted = frozenset(target.pid_at(st) for st in target.movers)
        special = {goal.key} | state.touched.keys()
        sources = [k for k in sorted(special) if state.gpu(k).model.name == name]
        for key in [*sources, *state.others(name, special)]:
            gpu = state.gpu(key)
            if key == goal.key or not gpu.movers:
                continue
            if spare >= 2 or opens_room(name, gpu.layout, frozenset(gpu.movers), wanted):
                for start in sorted(gpu.movers):
                    yield from self._moves_of(state, goal, key, start, lean=lean)

    def _moves_of(
        self, state: State, goal: Goal, src: GpuKey, start: int, *, lean: bool
    ) -> Iterator[Move]:
        """Every distinct legal move of the slice at ``start`` on ``src``, best places first."""
        gpu = state.gpu(src)
        name = gpu.model.name
        mover = gpu.movers[start]
        pid = gpu.pid_at(start)
        special = {goal.key, src} | state.touched.keys()
        near = sorted(
            (preference(name, state.gpu(k).layout, pid, st), k, st)
            for k in special
            if state.gpu(k).model.name == name
            for st in layout_free_starts(name, state.gpu(k).layout, pid)
            if (k, st) != (src, start)
        )
        far: Iterable[tuple[tuple[int, ...], GpuKey, int]] = (
            (pref, member, st)
            for pref, ck, st in self.cluster.rooms(name, pid)
            if (member := next((k for k in self.cluster.classes[ck] if k not in special), None))
        )
        if lean:
            far = itertools.islice(far, 1)
        for _, key, st in heapq.merge(near, far, key=lambda e: e[0]):
            yield Move(
                instance_id=mover.instance_id,
                model_id=mover.model_id,
                node=key[0],
                gpu_index=key[1],
                profile=gpu.model.profile(pid).name,
                start=st,
                from_node=src[0],
                from_gpu_index=src[1],
                from_start=start,
            )
