"""One simulated engine instance: slots, prefill, and decoding as processor sharing.

Like the sim engine (``migserve_agent.sim_engine.engine``), a request holds a
slot from prefill to its last token; its first token comes ``TTFT(prompt)``
after it took the slot, then one token every ``TPOT(N)``, N being the slots
in use. All decoding requests advance together, so the instance keeps one
virtual clock ``v``: tokens each decoding request has produced since the
instance started. A request that starts decoding at ``v0`` with ``L`` tokens
left ends when ``v = v0 + L``. Between changes of N, ``v`` grows at
``1 / TPOT(N)``; the instance also integrates the tokens produced within the
model's TPOT SLO (``good_v``) and the counters the watcher would scrape.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Literal

from migserve_agent.sim_engine.perf import PerfModel

InstanceStatus = Literal["creating", "starting", "ready", "draining", "gone"]


@dataclass(slots=True, eq=False)
class SimRequest:
    """A request and what happened to it (times in simulated seconds)."""

    rid: int
    model: str
    arrival: float
    prompt_tokens: int
    output_tokens: int
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    failed: str = ""
    instance: str = ""
    #: the instance's virtual clock when this request started decoding
    v0: float = 0.0
    good_v0: float = 0.0
    #: tokens produced within the SLO (the first token counts as within)
    good_tokens: float = 0.0
    tpot_s: float | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None or bool(self.failed)


@dataclass(slots=True, eq=False)
class SimInstance:
    """An engine instance on a slice; the simulator drives it through ``advance``."""

    instance_id: str
    model: str
    gpu: int
    profile: str
    start: int
    compute_slices: int
    memory_slices: int
    slots: int
    perf: PerfModel
    slo_s: float
    status: InstanceStatus = "creating"
    created_at: float = 0.0
    ready_at: float | None = None
    #: requests in prefill, by request id
    prefilling: dict[int, SimRequest] = field(default_factory=dict)
    #: decoding requests as (end v, seq, request)
    decoding: list[tuple[float, int, SimRequest]] = field(default_factory=list)
    v: float = 0.0
    good_v: float = 0.0
    last: float = 0.0
    #: bumped on every change of N; stale scheduled completions carry an older one
    version: int = 0
    # counters a scrape would read (bridge inter-token histogram, tokens, finished)
    latency_sum_s: float = 0.0
    latency_count: float = 0.0
    tokens: float = 0.0
    finished: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def in_use(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def free(self) -> int:
        return self.slots - self.in_use if self.status == "ready" else 0

    def tpot_s(self, n: int | None = None) -> float:
        return self.perf.tpot_ms(self.in_use if n is None else n) / 1000.0

    def advance(self, now: float) -> None:
        """Move the virtual clock to ``now`` at the current N."""
        dt = now - self.last
        self.last = now
        if dt <= 0 or not self.decoding:
            return
        tpot = self.tpot_s()
        dv = dt / tpot
        self.v += dv
        d = len(self.decoding)
        if tpot <= self.slo_s:
            self.good_v += dv
        self.latency_sum_s += d * dt
        self.latency_count += d * dv
        self.tokens += d * dv

    def take(self, req: SimRequest, now: float) -> float:
        """Give ``req`` a slot now; returns when its prefill ends (first token)."""
        self.advance(now)
        req.started = now
        req.instance = self.instance_id
        self.prefilling[req.rid] = req
        self.version += 1
        return now + self.perf.ttft_ms(req.prompt_tokens) / 1000.0

    def first_token(self, req: SimRequest, now: float) -> bool:
        """Prefill of ``req`` ended; True when it has more tokens to decode."""
        self.advance(now)
        del self.prefilling[req.rid]
        req.first_token = now
        self.tokens += 1
        self.version += 1
        left = req.output_tokens - 1
        if left <= 0:
            return False
        req.v0 = self.v
        req.good_v0 = self.good_v
        heapq.heappush(self.decoding, (self.v + left, next(self._seq), req))
        return True

    def pop_finished(self, now: float) -> list[SimRequest]:
        """Requests whose last token is due by ``now`` (after ``advance``), removed."""
        self.advance(now)
        done: list[SimRequest] = []
        eps = 1e-9
        while self.decoding and self.decoding[0][0] <= self.v + eps:
            _, _, req = heapq.heappop(self.decoding)
            self._finish(req, now)
            done.append(req)
        if done:
            self.version += 1
        return done

    def _finish(self, req: SimRequest, now: float) -> None:
        left = req.output_tokens - 1
        req.finished = now
        req.good_tokens = 1 + min(left, self.good_v - req.good_v0)
        first = req.first_token if req.first_token is not None else now
        req.tpot_s = (now - first) / left if left > 0 else None
        self.finished += 1

    def next_completion(self) -> float | None:
        """When the next decoding request ends at the current N (None: none decoding)."""
        if not self.decoding:
            return None
        return self.last + max(0.0, self.decoding[0][0] - self.v) * self.tpot_s()

    def evict(self, now: float, reason: str) -> list[SimRequest]:
        """Fail every request still on the instance (a drain that timed out)."""
        self.advance(now)
        out = [*self.prefilling.values(), *(r for _, _, r in self.decoding)]
        for req in out:
            req.failed = reason
            if req.first_token is not None:
                left = max(0, req.output_tokens - 1)
                req.good_tokens = 1 + min(max(0.0, self.good_v - req.good_v0), left)
        self.prefilling.clear()
        self.decoding.clear()
        self.version += 1
        return out
