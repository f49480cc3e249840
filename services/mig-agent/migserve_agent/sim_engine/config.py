"""Settings of one sim engine instance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from migserve_agent.sim_engine.perf import MigProfile, PerfModel

DEFAULT_PROFILE = MigProfile(name="7g.40gb", compute_slices=7, memory_slices=8)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimEngineConfig:
    """What one simulated inference server serves, on which slice, and how fast."""

    #: model id reported by /info, /v1/models and every response
    model_id: str = "migserve/sim-llm"
    #: the MIG slice it pretends to run on (drives the performance model)
    profile: MigProfile = field(default=DEFAULT_PROFILE)
    #: requests generating at once; more wait in a FIFO queue
    slots: int = 8
    #: queued requests beyond which new ones get 429 (None: unbounded)
    max_queue: int | None = None
    #: seconds after start during which /health and inference answer 503
    startup_delay_s: float = 0.0
    #: multiplies TPOT and TTFT (> 1 is slower); changeable via POST /sim/speed
    speed_factor: float = 1.0
    #: overrides of the performance model (ms); None uses the fitted formulas
    alpha_ms: float | None = None
    beta_ms: float | None = None
    prefill_ms_per_token: float | None = None
    #: the simulated model's weights relative to the 7B reference of the perf model
    weights_scale: float = 1.0
    #: prompt tokens + max tokens may not exceed this
    max_context: int = 4096
    #: max tokens when a request names none (capped by the context left)
    default_max_tokens: int = 64
    max_stop_sequences: int = 4
    #: seeds the per-request seeds of requests that bring none
    seed: int = 0
    #: FAULT INJECTION: exit with status 1 when loading would end (a crash at start)
    fail_start: bool = False
    #: FAULT INJECTION: stay "loading" forever (/health and inference answer 503)
    never_healthy: bool = False

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ValueError("model_id must not be empty")
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0 or None, got {self.max_queue}")
        if not (math.isfinite(self.startup_delay_s) and self.startup_delay_s >= 0):
            raise ValueError(f"startup_delay_s must be >= 0, got {self.startup_delay_s}")
        if self.max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {self.max_context}")
        if not 1 <= self.default_max_tokens < self.max_context:
            raise ValueError(
                f"default_max_tokens must be 1..{self.max_context - 1}, "
                f"got {self.default_max_tokens}"
            )
        if self.max_stop_sequences < 0:
            raise ValueError(f"max_stop_sequences must be >= 0, got {self.max_stop_sequences}")
        self.perf_model()  # validates speed factor and overrides

    def perf_model(self) -> PerfModel:
        """The performance model these settings describe."""
        return PerfModel.for_profile(
            self.profile.compute_slices,
            self.profile.memory_slices,
            speed_factor=self.speed_factor,
            alpha_ms=self.alpha_ms,
            beta_ms=self.beta_ms,
            prefill_ms_per_token=self.prefill_ms_per_token,
            weights_scale=self.weights_scale,
        )
