"""Placement and defragmentation against a brute force, on small random clusters.

Clusters of 1-4 GPUs of every model in ``mig.GPU_MODELS`` carry random legal
layouts whose slices belong to ready instances (movable), to instances in
other states, to plans in flight (reservations) or to nobody (slices the agent
found). A breadth-first search over every layout reachable by at most
``max_moves`` make-before-break moves of ready instances says whether, and in
how few moves, the request can be placed. Then:

* ``plan_moves`` finds a plan exactly when the brute force does, with as few
  moves as the brute force's shortest; replaying the plan move by move with
  ``mig.placement_error`` never meets an illegal layout, and only ready
  instances move, each to a GPU of its own model;
* ``choose_placement`` never returns an illegal placement, and returns
  ``NoCapacity`` only when the brute force finds no free start; it picks an
  empty GPU only when no GPU holding slices has room for a profile as small
  (consolidation), and ``plan_moves`` without moves picks the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from hypothesis import HealthCheck, event, example, given, settings, target
from hypothesis import strategies as st
from migserve_scaler.core.defrag import MovePlan, plan_moves
from migserve_scaler.core.placement import (
    NoCapacity,
    Placement,
    Reservation,
    candidate_profiles,
    choose_placement,
)
from migserve_shared import mig
from migserve_shared.messages import GpuState, InstanceRecord, ModelSpec, NodeState, SliceState

#: what a slice belongs to
OWNERS = ("ready", "ready", "ready", "ready", "starting", "draining", "plan", "nobody")


@dataclass(frozen=True)
class Placed:
    profile_id: int
    start: int
    owner: str  # one of OWNERS
    reported: bool  # the node reports it (otherwise only the reservation names it)


@dataclass(frozen=True)
class Scenario:
    models: tuple[str, ...]
    layouts: tuple[tuple[Placed, ...], ...]
    spec: ModelSpec
    profile: str | None
    max_moves: int

    def node_of(self, g: int) -> str:
        return f"node-{g % 2}"

    def key(self, g: int) -> tuple[str, int]:
        return self.node_of(g), g

    def nodes(self) -> list[NodeState]:
        by_node: dict[str, list[GpuState]] = {}
        for g, (model, layout) in enumerate(zip(self.models, self.layouts, strict=True)):
            m = mig.gpu_model(model)
            slices = [
                SliceState(
                    gi_id=i,
                    profile_id=s.profile_id,
                    profile=m.profile(s.profile_id).name,
                    start=s.start,
                )
                for i, s in enumerate(layout)
                if s.reported
            ]
            by_node.setdefault(self.node_of(g), []).append(
                GpuState(index=g, uuid=f"GPU-{g}", model=model, slices=slices)
            )
        return [NodeState(node=n, gpus=gpus) for n, gpus in by_node.items()]

    def instances(self) -> list[InstanceRecord]:
        out = []
        for g, (model, layout) in enumerate(zip(self.models, self.layouts, strict=True)):
            m = mig.gpu_model(model)
            for s in layout:
                if s.owner in ("ready", "starting", "draining"):
                    out.append(
                        InstanceRecord(
                            instance_id=f"i-{g}-{s.start}",
                            model_id="org/other",
                            node=self.node_of(g),
                            gpu_index=g,
                            profile=m.profile(s.profile_id).name,
                            start=s.start,
                            state=s.owner,  # type: ignore[arg-type]
                        )
                    )
        return out

    def reserved(self) -> dict[tuple[str, int], list[Reservation]]:
        """As ``demand.reserved_slices`` builds it: instances holding slices and plans."""
        out: dict[tuple[str, int], list[Reservation]] = {}
        for g, (model, layout) in enumerate(zip(self.models, self.layouts, strict=True)):
            m = mig.gpu_model(model)
            for s in layout:
                if s.owner != "nobody":
                    node = self.node_of(g)
                    res = Reservation(node, g, m.profile(s.profile_id).name, s.start)
                    out.setdefault((node, g), []).append(res)
        return out

    def wanted(self, model: mig.GpuModel) -> list[mig.Profile]:
        if self.profile is None:
            return candidate_profiles(model, self.spec)
        return [p for p in model.profiles if p.name == self.profile]


@st.composite
def layouts(draw: st.DrawFn, model: mig.GpuModel, small: bool) -> tuple[Placed, ...]:
    """A legal layout: up to 7 slices, each drawn from the places still legal.

    ``small`` layouts use only 1- and 2-memory-slice profiles: fragmented
    GPUs on which a large profile needs moves.
    """
    placed: list[Placed] = []
    slices: list[mig.Slice] = []
    profiles = [p for p in model.profiles if not small or p.memory_slices <= 2]
    for _ in range(draw(st.integers(1, 7))):
        legal = [(p, s) for p in profiles for s in mig.free_starts(model, slices, p)]
        if not legal:
            break
        profile, start = draw(st.sampled_from(legal))
        slices.append(mig.Slice(profile.id, start))
        owner = draw(st.sampled_from(OWNERS))
        reported = owner == "nobody" or draw(st.booleans())
        placed.append(Placed(profile.id, start, owner, reported))
    return tuple(placed)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 4))
    names = [m.name for m in mig.GPU_MODELS]
    if draw(st.integers(0, 3)) > 0:
        models = (draw(st.sampled_from(names)),) * n
    else:
        models = tuple(draw(st.lists(st.sampled_from(names), min_size=n, max_size=n)))
    small = draw(st.booleans())
    layout_list = tuple(draw(layouts(mig.gpu_model(m), small)) for m in models)
    any_model = mig.gpu_model(draw(st.sampled_from(models)))
    # larger profiles first: they are the ones that need moves
    asked = draw(st.sampled_from(sorted(any_model.profiles, key=lambda p: -p.memory_slices)))
    profile: str | None = None
    lo: str | None = None
    if draw(st.integers(0, 3)) == 0:
        profile = asked.name
    elif draw(st.integers(0, 3)) == 0:
        lo = asked.name
    spec = ModelSpec(
        model_id="org/new",
        memory_mb=max(1, asked.memory_mb - draw(st.integers(0, 1000))),
        tpot_slo_ms=50,
        min_profile=lo,
    )
    return Scenario(models, layout_list, spec, profile, draw(st.sampled_from((2, 1, 0))))


@st.composite
def tight_layouts(draw: st.DrawFn, model: mig.GpuModel) -> tuple[Placed, ...]:
    """A nearly full layout of ready slices and slices nobody owns, all reported."""
    small = draw(st.booleans())
    profiles = [p for p in model.profiles if not small or p.memory_slices <= 2]
    placed: list[Placed] = []
    slices: list[mig.Slice] = []
    while legal := [(p, s) for p in profiles for s in mig.free_starts(model, slices, p)]:
        if draw(st.integers(0, 6)) == 0:
            break
        profile, start = draw(st.sampled_from(legal))
        slices.append(mig.Slice(profile.id, start))
        owner = draw(st.sampled_from(("ready", "nobody")))
        placed.append(Placed(profile.id, start, owner, True))
    return tuple(placed)


@st.composite
def tight_scenarios(draw: st.DrawFn) -> Scenario:
    """2-4 GPUs of one model, nearly full, asked for a profile of 2 or more memory slices:
    where moves, and chains of moves, are needed."""
    model = draw(st.sampled_from(mig.GPU_MODELS))
    n = draw(st.integers(2, 4))
    layout_list = tuple(draw(tight_layouts(model)) for _ in range(n))
    asked = draw(st.sampled_from([p for p in model.by_size() if p.memory_slices >= 2]))
    spec = ModelSpec(model_id="org/new", memory_mb=1, tpot_slo_ms=50, min_profile=asked.name)
    return Scenario((model.name,) * n, layout_list, spec, None, 2)


#: the 2g blocking 4g on GPU 0 fits nowhere until a 1g leaves GPU 1 for GPU 2
CHAIN = Scenario(
    ("A100-SXM4-40GB",) * 3,
    (
        (Placed(14, 0, "ready", True), Placed(9, 4, "nobody", True)),
        (Placed(9, 0, "nobody", True), Placed(19, 4, "ready", True), Placed(19, 6, "nobody", True)),
        (Placed(5, 0, "nobody", True), Placed(14, 4, "nobody", True)),
    ),
    ModelSpec(model_id="org/new", memory_mb=1, tpot_slo_ms=50, min_profile="4g.20gb"),
    None,
    2,
)


# ---- brute force ---------------------------------------------------------------------------

#: per GPU: slices as (profile id, start, movable)
State = tuple[frozenset[tuple[int, int, bool]], ...]


def _initial(sc: Scenario) -> State:
    return tuple(
        frozenset((s.profile_id, s.start, s.owner == "ready") for s in layout)
        for layout in sc.layouts
    )


@lru_cache(maxsize=1 << 16)
def _free(model_name: str, layout: frozenset[tuple[int, int]], pid: int) -> tuple[int, ...]:
    """``mig.free_starts``, remembered (the brute force asks the same question often)."""
    model = mig.gpu_model(model_name)
    slices = [mig.Slice(p, start) for p, start in layout]
    return tuple(mig.free_starts(model, slices, model.profile(pid)))


def _plain(layout: frozenset[tuple[int, int, bool]]) -> frozenset[tuple[int, int]]:
    return frozenset((pid, start) for pid, start, _ in layout)


def _admits(sc: Scenario, g: int, layout: frozenset[tuple[int, int, bool]]) -> bool:
    model = mig.gpu_model(sc.models[g])
    return any(_free(model.name, _plain(layout), p.id) for p in sc.wanted(model))


def _moves(sc: Scenario, state: State) -> Iterator[State]:
    """Every state one make-before-break move of a ready instance away."""
    for g, layout in enumerate(state):
        model = mig.gpu_model(sc.models[g])
        for item in layout:
            pid, _, movable = item
            if not movable:
                continue
            for h, dest in enumerate(state):
                if sc.models[h] != sc.models[g]:
                    continue
                for to in _free(model.name, _plain(dest), pid):
                    new = list(state)
                    new[g] = layout - {item}
                    new[h] = (new[h] if h != g else new[g]) | {(pid, to, True)}
                    yield tuple(new)


def shortest(sc: Scenario) -> int | None:
    """The fewest moves after which some GPU admits the request, or None within max_moves."""
    frontier = {_initial(sc)}
    seen = set(frontier)
    for depth in range(sc.max_moves + 1):
        if any(_admits(sc, g, lay) for state in frontier for g, lay in enumerate(state)):
            return depth
        if depth == sc.max_moves:
            return None
        nxt: set[State] = set()
        for state in frontier:
            for new in _moves(sc, state):
                if new not in seen:
                    seen.add(new)
                    nxt.add(new)
        frontier = nxt
    return None


# ---- replay --------------------------------------------------------------------------------


def replay(sc: Scenario, plan: MovePlan) -> None:
    """Carry out the plan on the scenario's layouts, checking every step with the rules."""
    index = {sc.key(g): g for g in range(len(sc.models))}
    state = [
        {s.start: (s.profile_id, s.owner, f"i-{g}-{s.start}") for s in layout}
        for g, layout in enumerate(sc.layouts)
    ]
    for move in plan.moves:
        g, h = index[move.from_node, move.from_gpu_index], index[move.node, move.gpu_index]
        model = mig.gpu_model(sc.models[g])
        assert sc.models[h] == sc.models[g], move
        pid, owner, iid = state[g][move.from_start]
        assert (owner, iid) == ("ready", move.instance_id), move
        profile = model.profile(pid)
        assert profile.name == move.profile
        dest = [mig.Slice(p, s) for s, (p, _, _) in state[h].items()]
        assert mig.placement_error(model, dest, profile, move.start) is None, move
        state[h][move.start] = (pid, owner, iid)
        mig.validate_layout(model, [mig.Slice(p, s) for s, (p, _, _) in state[h].items()])
        assert (g, move.from_start) != (h, move.start), move
        del state[g][move.from_start]
    t = plan.target
    g = index[t.node, t.gpu_index]
    model = mig.gpu_model(sc.models[g])
    assert t.gpu_model == model.name
    profile = model.profile(t.profile)
    assert profile in sc.wanted(model)
    layout = [mig.Slice(p, s) for s, (p, _, _) in state[g].items()]
    assert mig.placement_error(model, layout, profile, t.start) is None, t


def check_placement(sc: Scenario, got: Placement) -> None:
    g = {sc.key(i): i for i in range(len(sc.models))}[got.node, got.gpu_index]
    model = mig.gpu_model(sc.models[g])
    profile = model.profile(got.profile)
    assert profile in candidate_profiles(model, sc.spec)
    layout = [mig.Slice(s.profile_id, s.start) for s in sc.layouts[g]]
    assert mig.placement_error(model, layout, profile, got.start) is None, got


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(scenarios(), tight_scenarios()))
@example(CHAIN)
def test_plan_moves_matches_brute_force(sc: Scenario) -> None:
    best = shortest(sc)
    event(f"shortest={best} of max {sc.max_moves}")
    target(-1.0 if best is None else float(best), label="moves needed")
    got = plan_moves(
        sc.spec,
        sc.nodes(),
        sc.instances(),
        sc.reserved(),
        profile=sc.profile,
        max_moves=sc.max_moves,
    )
    if best is None:
        assert isinstance(got, NoCapacity), got
        return
    assert isinstance(got, MovePlan), (best, got)
    assert len(got.moves) == best  # never more; fewer would beat the brute force
    replay(sc, got)


@settings(max_examples=300, deadline=None)
@given(st.one_of(scenarios(), tight_scenarios()))
def test_choose_placement_is_legal_and_complete(sc: Scenario) -> None:
    got = choose_placement(sc.spec, sc.nodes(), sc.reserved())
    direct = Scenario(sc.models, sc.layouts, sc.spec, None, 0)
    if isinstance(got, NoCapacity):
        assert shortest(direct) is None, got
        return
    check_placement(sc, got)
    g = {sc.key(i): i for i in range(len(sc.models))}[got.node, got.gpu_index]
    if not sc.layouts[g]:  # an empty GPU: no GPU in use may have room for a profile as small
        size = (
            got.profile_memory_mb,
            mig.gpu_model(got.gpu_model).profile(got.profile).compute_slices,
        )
        for h, layout in enumerate(sc.layouts):
            model = mig.gpu_model(sc.models[h])
            plain = frozenset((s.profile_id, s.start) for s in layout)
            for p in candidate_profiles(model, sc.spec):
                if layout and (p.memory_mb, p.compute_slices) <= size:
                    assert not _free(model.name, plain, p.id), (h, p.name, got)
    plan = plan_moves(sc.spec, sc.nodes(), sc.instances(), sc.reserved(), max_moves=0)
    assert isinstance(plan, MovePlan) and plan.moves == ()
    assert (plan.target.node, plan.target.gpu_index, plan.target.profile, plan.target.start) == (
        got.node,
        got.gpu_index,
        got.profile,
        got.start,
    )
