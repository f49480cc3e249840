"""Where a slice of a given shape can come from, and the steps that make it.

In order of preference:

1. a free place (``placement.choose_placement``): make the new slice while
   the old instance still serves (make before break);
2. a place that moves of other ready instances open (``defrag.plan_moves``),
   each move itself make before break (create at the destination, then
   retire the original), then the new slice;
3. only for a bigger slice that fits nowhere while the old one exists but
   fits where the old one is: retire the old instance first, then make the
   new slice there (break before make; the gateway holds requests meanwhile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
from migserve_shared.messages import InstanceRecord, ModelSpec, NodeState, PlanStep

from migserve_scaler.core.cluster import Shape
from migserve_scaler.core.defrag import Move, MovePlan, plan_moves
from migserve_scaler.core.effects import IdSource
from migserve_scaler.core.ladder import pinned
from migserve_scaler.core.placement import NoCapacity, Placement, Reservation, choose_placement
from migserve_scaler.core.view import ClusterView

Reserved = Mapping[tuple[str, int], Sequence[Reservation]]


@dataclass(frozen=True, slots=True)
class Room:
    """What the cluster looks like to placement, and what may not move."""

    nodes: Sequence[NodeState]
    reserved: Reserved
    #: ready instances other plans may move (not busy, model registered)
    movable: Sequence[InstanceRecord]


@dataclass(frozen=True, slots=True)
class Route:
    """Steps that end with a new slice at ``target`` (the last step, a create)."""

    steps: tuple[PlanStep, ...]
    target: Placement
    moves: int = 0
    break_before_make: bool = False


def create_step(
    ids: IdSource, where: Placement | Move, *, model_id: str = "", replaces: str = ""
) -> PlanStep:
    return PlanStep(
        op="create",
        command_id=ids("cmd-"),
        instance_id=ids("inst-"),
        node=where.node,
        gpu_index=where.gpu_index,
        profile=where.profile,
        start=where.start,
        model_id=model_id,
        replaces=replaces,
    )


def retire_step(ids: IdSource, rec: InstanceRecord, *, other_model: bool = False) -> PlanStep:
    return PlanStep(
        op="retire",
        command_id=ids("cmd-"),
        instance_id=rec.instance_id,
        node=rec.node,
        gpu_index=rec.gpu_index,
        profile=rec.profile,
        start=rec.start,
        model_id=rec.model_id if other_model else "",
    )


def place(spec: ModelSpec, room: Room, shape: Shape | None = None) -> Placement | None:
    """A free place for a slice of ``shape`` (any shape that holds the model when None)."""
    target = spec if shape is None else pinned(spec, shape)
    found = choose_placement(target, room.nodes, room.reserved)
    return None if isinstance(found, NoCapacity) else found


def find_moves(
    spec: ModelSpec, room: Room, shape: Shape, *, exclude: set[str], max_moves: int
) -> MovePlan | None:
    """Moves of other ready instances after which a slice of ``shape`` fits (the seam to
    ``defrag.plan_moves``); None when there is none within ``max_moves``."""
    if max_moves <= 0:
        return None
    movable = [r for r in room.movable if r.instance_id not in exclude]
    found = plan_moves(pinned(spec, shape), room.nodes, movable, room.reserved, max_moves=max_moves)
    return None if isinstance(found, NoCapacity) or not found.moves else found


def moves_route(plan: MovePlan, ids: IdSource, view: ClusterView, *, replaces: str = "") -> Route:
    """Each move as create-then-retire, then the new slice at the plan's target."""
    steps: list[PlanStep] = []
    for move in plan.moves:
        steps.append(create_step(ids, move, model_id=move.model_id, replaces=move.instance_id))
        old = view.instances[move.instance_id]
        steps.append(retire_step(ids, old, other_model=True))
    steps.append(create_step(ids, plan.target, replaces=replaces))
    return Route(tuple(steps), plan.target, moves=len(plan.moves))


def place_instead(
    spec: ModelSpec, room: Room, rec: InstanceRecord, shape: Shape
) -> Placement | None:
    """Break before make: a place for ``shape`` on ``rec``'s GPU once ``rec``'s slice is gone."""
    node = next((n for n in room.nodes if n.node == rec.node), None)
    if node is None:
        return None
    gpus = [
        msgspec.structs.replace(g, slices=[s for s in g.slices if s.start != rec.start])
        for g in node.gpus
        if g.index == rec.gpu_index
    ]
    key = (rec.node, rec.gpu_index)
    reserved = {key: [r for r in room.reserved.get(key, ()) if r.start != rec.start]}
    found = choose_placement(
        pinned(spec, shape), [msgspec.structs.replace(node, gpus=gpus)], reserved
    )
    return None if isinstance(found, NoCapacity) else found


def replacement_route(
    view: ClusterView,
    spec: ModelSpec,
    room: Room,
    rec: InstanceRecord,
    shapes: Sequence[Shape],
    *,
    ids: IdSource,
    max_moves: int,
    break_before_make: bool,
) -> Route | None:
    """How to replace ``rec`` by a slice of the first placeable of ``shapes``:
    free room for any of them, else moves or (when allowed) break before make for
    the first. The route's steps end with retiring ``rec`` (or begin with it)."""
    for shape in shapes:
        where = place(spec, room, shape)
        if where is not None:
            new = create_step(ids, where, replaces=rec.instance_id)
            return Route((new, retire_step(ids, rec)), where)
    if not shapes:
        return None
    moves = find_moves(spec, room, shapes[0], exclude={rec.instance_id}, max_moves=max_moves)
    if moves is not None:
        route = moves_route(moves, ids, view, replaces=rec.instance_id)
        return Route((*route.steps, retire_step(ids, rec)), route.target, moves=route.moves)
    if break_before_make:
        where = place_instead(spec, room, rec, shapes[0])
        if where is not None:
            new = create_step(ids, where, replaces=rec.instance_id)
            return Route((retire_step(ids, rec), new), where, break_before_make=True)
    return None


def replica_route(
    view: ClusterView, spec: ModelSpec, room: Room, shape: Shape | None, *, ids: IdSource,
    max_moves: int,
) -> Route | None:  # fmt: skip
    """How to add a replica: of ``shape`` in free room or after moves, else of any
    shape that holds the model in free room."""
    if shape is not None:
        where = place(spec, room, shape)
        if where is not None:
            return Route((create_step(ids, where),), where)
        moves = find_moves(spec, room, shape, exclude=set(), max_moves=max_moves)
        if moves is not None:
            return moves_route(moves, ids, view)
    where = place(spec, room, None)
    return None if where is None else Route((create_step(ids, where),), where)
