"""The discrete-event simulator: requests, instances, the watcher's windows, a policy.

Simulated time runs in seconds from the trace's first request; one heap
(``heapq``) orders every event: arrivals, prefill ends, decode completions,
the scaler's ticks (``tick_s``), the watcher's windows (``watch_interval_s``)
and the simulated agent's steps.

Dispatch is load-aware as in production (one shared queue per model, a
bridge worker per free slot): a request goes to the ready instance of its
model with the most free slots, else waits in the model's FIFO queue; it
fails when it waited ``queue_timeout_s`` (the gateway's hold timeout). While
a model has waiting requests and no ready instance, a ``Demand`` goes to the
policy at most every ``demand_interval_s`` (the gateway's rule).

Every ``watch_interval_s`` each ready instance is "scraped" into a watcher
``Sample`` and the watcher's own arithmetic (``migserve_watcher.core.tpot``)
turns the sliding window into one ``SloEvidence`` per model, the queue
length added as waiting (the JetStream backlog the watcher adds).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from migserve_shared.messages import Event, InstanceRecord, NodeState, SloEvidence
from migserve_watcher.core.tpot import History, Sample, add_sample, instance_window, model_evidence

from migserve_cli.sim.agent import SimAgent
from migserve_cli.sim.cluster import SimCluster
from migserve_cli.sim.config import SimConfig, SimModel
from migserve_cli.sim.instance import SimInstance, SimRequest
from migserve_cli.sim.traces import Trace

#: wall-clock time of simulated second 0 in everything the real cores see
EPOCH = 1_700_000_000.0

_ARRIVE, _PREFILL, _DECODE, _TICK, _WINDOW, _CALL = range(6)


class Controller(Protocol):
    """A serving policy: it reacts to time, windows, demand and agent events."""

    name: str

    def start(self, sim: Simulator) -> None: ...

    def on_tick(self, sim: Simulator) -> None: ...

    def on_window(self, sim: Simulator, evidence: Mapping[str, SloEvidence]) -> None: ...

    def on_demand(self, sim: Simulator, model_id: str, waiting: int) -> None: ...

    def on_agent_event(self, sim: Simulator, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class WindowPoint:
    """One model at one watcher window (for plots)."""

    t: float
    model: str
    tpot_ms: float | None
    compute_slices: int
    instances: int
    in_flight: int
    waiting: int


class Simulator:
    """One run of one policy over one trace."""

    def __init__(
        self,
        *,
        config: SimConfig,
        models: Sequence[SimModel],
        trace: Trace,
        controller: Controller,
        record_windows: bool = True,
    ) -> None:
        self.config = config
        self.controller = controller
        self.models = {m.model_id: m for m in models}
        order = [m.model_id for m in models]
        self.now = 0.0
        self.cluster = SimCluster(config)
        self.agent = SimAgent(self)
        self.instances: dict[str, SimInstance] = {}
        self.ready: dict[str, list[SimInstance]] = {m: [] for m in order}
        self.queues: dict[str, deque[SimRequest]] = {m: deque() for m in order}
        #: the instances and nodes KV buckets as the agents keep them
        self.records: dict[str, InstanceRecord] = {}
        self.nodes: dict[str, NodeState] = {
            n: self.cluster.node_state(n, EPOCH) for n in self.cluster.node_names()
        }
        self.requests = [
            SimRequest(
                i,
                order[r.model % len(order)],
                r.arrival_s,
                r.prompt_tokens,
                max(1, r.output_tokens),
            )
            for i, r in enumerate(trace.requests)
        ]
        self.windows: list[WindowPoint] = []
        self.record_windows = record_windows
        self.end = 0.0
        self._pending = len(self.requests)
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = itertools.count()
        self._histories: dict[str, History] = {}
        self._last_demand: dict[str, float] = {}
        self._ids = itertools.count(1)

    # Scheduling -----------------------------------------------------------------
    def _push(self, t: float, kind: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``t`` (after what is due at the same time)."""
        self._push(max(t, self.now), _CALL, fn)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    @property
    def abs_now(self) -> float:
        """The wall-clock time the real cores see."""
        return EPOCH + self.now

    def run(self) -> None:
        for req in self.requests:
            self._push(req.arrival, _ARRIVE, req)
        self._push(0.0, _TICK)
        self._push(self.config.watch_interval_s, _WINDOW)
        self.controller.start(self)
        heap = self._heap
        while heap and self._pending > 0:
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind == _DECODE:
                self._on_decode(a, b)
            elif kind == _PREFILL:
                self._on_prefill(a, b)
            elif kind == _ARRIVE:
                self._on_arrive(a)
            elif kind == _CALL:
                a()
            elif kind == _TICK:
                self._on_tick()
            else:
                self._on_window()
        self.end = self.now

    # Requests --------------------------------------------------------------------
    def _on_arrive(self, req: SimRequest) -> None:
        self.queues[req.model].append(req)
        self.dispatch(req.model)
        if self.queues[req.model] and not self.ready[req.model]:
            self._maybe_demand(req.model)

    def dispatch(self, model: str) -> None:
        """Give queued requests of ``model`` to ready instances with free slots."""
        queue = self.queues[model]
        ready = self.ready[model]
        while queue and ready:
            inst = max(ready, key=lambda i: i.free)
            if inst.free <= 0:
                return
            req = queue.popleft()
            done_at = inst.take(req, self.now)
            self._push(done_at, _PREFILL, inst, req)
            self._reschedule(inst)

    def _reschedule(self, inst: SimInstance) -> None:
        t = inst.next_completion()
        if t is not None:
            self._push(t, _DECODE, inst, inst.version)

    def _on_prefill(self, inst: SimInstance, req: SimRequest) -> None:
        if req.failed or req.rid not in inst.prefilling:
            return
        if not inst.first_token(req, self.now):
            req.good_tokens = 1.0
            req.finished = self.now
            self._complete(req)
        self._reschedule(inst)
        self._slot_freed(inst)

    def _on_decode(self, inst: SimInstance, version: int) -> None:
        if version != inst.version:
            return
        for req in inst.pop_finished(self.now):
            self._complete(req)
        self._reschedule(inst)
        self._slot_freed(inst)

    def _complete(self, req: SimRequest) -> None:
        self._pending -= 1

    def fail(self, req: SimRequest, reason: str) -> None:
        if not req.failed:
            req.failed = reason
        self._pending -= 1

    def _slot_freed(self, inst: SimInstance) -> None:
        if inst.status == "ready":
            if self.queues[inst.model]:
                self.dispatch(inst.model)
        elif inst.status == "draining" and inst.in_use == 0:
            self.agent.drained(inst)

    # Instances (called by the agent) ------------------------------------------------
    def instance_ready(self, inst: SimInstance) -> None:
        self.ready[inst.model].append(inst)
        inst.last = self.now
        self.dispatch(inst.model)

    def instance_unready(self, inst: SimInstance) -> None:
        if inst in self.ready[inst.model]:
            self.ready[inst.model].remove(inst)
        self._histories.pop(inst.instance_id, None)

    # Periodic work -------------------------------------------------------------------
    def _on_tick(self) -> None:
        timeout = self.config.queue_timeout_s
        for model, queue in self.queues.items():
            while queue and self.now - queue[0].arrival >= timeout:
                self.fail(queue.popleft(), f"no slot within {timeout:g} s")
            if queue and not self.ready[model]:
                self._maybe_demand(model)
        self.controller.on_tick(self)
        self._push(self.now + self.config.tick_s, _TICK)

    def _maybe_demand(self, model: str) -> None:
        last = self._last_demand.get(model)
        if last is not None and self.now - last < self.config.demand_interval_s:
            return
        self._last_demand[model] = self.now
        self.at(self.now, partial(self.controller.on_demand, self, model, len(self.queues[model])))

    def _on_window(self) -> None:
        evidence = {m: self.evidence(m) for m in self.models}
        if self.record_windows:
            for model, ev in evidence.items():
                ready = self.ready[model]
                self.windows.append(
                    WindowPoint(
                        self.now,
                        model,
                        ev.tpot_ms,
                        sum(i.compute_slices for i in ready),
                        len(ready),
                        ev.in_flight,
                        ev.waiting,
                    )
                )
        self.controller.on_window(self, evidence)
        self._push(self.now + self.config.watch_interval_s, _WINDOW)

    def evidence(self, model: str) -> SloEvidence:
        """Scrape the model's ready instances and compute the watcher's evidence."""
        windows = []
        for inst in self.ready[model]:
            inst.advance(self.now)
            sample = Sample(
                at=self.now,
                latency_sum_s=inst.latency_sum_s,
                latency_count=inst.latency_count,
                tokens=inst.tokens,
                requests=float(inst.finished),
                in_flight=float(inst.in_use),
                waiting=0.0,
            )
            history = add_sample(
                self._histories.get(inst.instance_id, ()),
                sample,
                window_s=self.config.watch_window_s,
            )
            self._histories[inst.instance_id] = history
            windows.append(instance_window(inst.instance_id, None, history))
        ev = model_evidence(windows, slo_ms=self.models[model].slo_ms, source="sim")
        waiting = len(self.queues[model])
        if waiting:
            ev = SloEvidence(
                tpot_ms=ev.tpot_ms,
                slo_ms=ev.slo_ms,
                window_s=ev.window_s,
                tokens=ev.tokens,
                in_flight=ev.in_flight,
                waiting=ev.waiting + waiting,
                request_rate=ev.request_rate,
                instances=ev.instances,
                source=ev.source,
            )
        return ev
