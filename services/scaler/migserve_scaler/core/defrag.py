"""Moves that make room: when a profile fits nowhere, relocate a few ready instances.

Each move is make-before-break: the instance's new slice is created while its
old slice still exists, then the old one is retired, so the layout is legal at
every moment (``mig.placement_error`` of the new slice against the layout that
still holds the old one). Moves keep the profile and stay on GPUs of the same
model (the profile name then means the same slice). Only instances in state
``ready`` move; slices of other instances, reservations of plans in flight and
slices no instance record names never move.

The search (``move_search``) is iterative deepening over the number of moves
(fewest first), over targets (GPU, profile, start) taken once per class of
identical GPUs, smallest profile first, each a depth-first search over the
moves that can matter. For ``max_moves`` up to 2 the search finds a plan whenever
one exists (tests/unit/test_scaler_defrag_property.py checks it against a
brute force over all layouts; random clusters with 3 moves agree too). Among
plans with the fewest moves the best is the one ``choose_placement`` would
rank first on the layout after the moves: smallest profile, a target GPU that
still holds slices before an empty one (consolidation), best capacity score of
the target GPU, most placement options left, fewest slices, then node, GPU and
start; with no moves needed it is ``choose_placement``'s answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from migserve_shared import mig
from migserve_shared.messages import InstanceRecord, ModelSpec, NodeState

from migserve_scaler.core.layouts import (
    Layout,
    goal_options,
    layout_rank,
    profile_by_id,
    profile_ids,
)
from migserve_scaler.core.move_search import Cluster, Goal, Gpu, GpuKey, Move, Search, State
from migserve_scaler.core.placement import NoCapacity, Placement, Reservation, candidate_profiles

__all__ = ["Move", "MovePlan", "plan_moves"]


@dataclass(frozen=True, slots=True)
class MovePlan:
    """Moves to carry out in order, after which ``target`` is free for the new slice."""

    moves: tuple[Move, ...]
    target: Placement


def plan_moves(
    spec: ModelSpec,
    nodes: Iterable[NodeState],
    instances: Iterable[InstanceRecord],
    reserved: Mapping[tuple[str, int], Sequence[Reservation]],
    *,
    profile: str | None = None,
    max_moves: int = 2,
) -> MovePlan | NoCapacity:
    """The fewest make-before-break moves after which a slice for ``spec`` fits.

    ``profile`` asks for that profile (by name, on GPUs whose model has it)
    instead of the candidates ``choose_placement`` would use. A plan without
    moves is returned when the slice fits already. Raises
    ``BadProfileBoundError`` when the spec's bounds name an unknown profile.
    """
    cluster = Cluster(nodes, instances, reserved)
    goals = _goals(cluster, spec, profile)
    search = Search(cluster)
    for budget in range(max(max_moves, 0) + 1):
        best: tuple[tuple[object, ...], Goal, list[Move]] | None = None
        for least, goal in goals:
            if least > budget:
                continue
            if best is not None and _size(goal) > _size(best[1]):
                break  # goals come smallest profile first: no later one can rank higher
            moves = [] if least == 0 else search.solve(goal, budget, failed_below=least < budget)
            if moves is not None:
                key = _rank(cluster, goal, moves)
                if best is None or key < best[0]:
                    best = (key, goal, moves)
        if best is not None:
            return _plan(cluster, best[1], best[2])
    wanted = profile or f"a profile holding {spec.memory_mb} MB"
    return NoCapacity(
        f"no GPU can take {wanted} for {spec.model_id} even after "
        f"{max_moves} make-before-break moves of ready instances "
        f"({len(cluster.class_of)} MIG GPUs considered)"
    )


def _goals(cluster: Cluster, spec: ModelSpec, profile: str | None) -> list[tuple[int, Goal]]:
    """(moves needed at least, goal) for one GPU per class, every start of every candidate
    profile, smallest profile first."""
    options: list[tuple[tuple[int, int], int, GpuKey, mig.GpuModel, int, int]] = []
    pids_of: dict[str, tuple[int, ...]] = {}
    for ck, keys in cluster.classes.items():
        name, layout, movable = ck
        model = mig.gpu_model(name)
        pids = pids_of.get(name)
        if pids is None:
            if profile is None:
                pids = tuple(p.id for p in candidate_profiles(model, spec))
            else:
                pid = profile_ids(name).get(profile)
                pids = () if pid is None else (pid,)
            pids_of[name] = pids
        for size, least, pid, start in goal_options(name, layout, movable, pids):
            options.append((size, least, keys[0], model, pid, start))
    options.sort(key=lambda o: o[0])
    return [
        (least, Goal(key, profile_by_id(m.name, pid), st)) for _, least, key, m, pid, st in options
    ]


def _size(goal: Goal) -> tuple[int, int]:
    return goal.profile.memory_mb, goal.profile.compute_slices


def _after(cluster: Cluster, goal: Goal, moves: list[Move]) -> tuple[Gpu, Layout]:
    """The target GPU after the moves, and its layout with the new slice."""
    state = State(cluster, {})
    for move in moves:
        state = state.apply(move)
    target = state.gpu(goal.key)
    return target, target.layout | {(goal.profile.id, goal.start)}


def _rank(cluster: Cluster, goal: Goal, moves: list[Move]) -> tuple[object, ...]:
    """Fewest moves, then the order ``choose_placement`` ranks placements in."""
    target, after = _after(cluster, goal, moves)
    rank = layout_rank(target.model.name, after)
    return (
        len(moves),
        *_size(goal),
        0 if target.layout else 1,  # GPUs in use first, as choose_placement ranks
        *(-v for v in rank),
        cluster.used_count[goal.key],
        goal.key,
        goal.start,
    )


def _plan(cluster: Cluster, goal: Goal, moves: list[Move]) -> MovePlan:
    target, after = _after(cluster, goal, moves)
    a, b, c, _ = layout_rank(target.model.name, after)
    p = goal.profile
    where = Placement(
        goal.key[0], goal.key[1], target.model.name, p.name, p.memory_mb, goal.start, (a, b, c)
    )
    return MovePlan(tuple(moves), where)
