"""Performance model of the sim engine: how fast a simulated model runs on a MIG slice.

Pure: no I/O, no clock, no asyncio. The server asks it for the time per output
token (TPOT) and the time to first token (TTFT) and sleeps accordingly.

Source numbers
--------------
NEWSLabNTU/Delta-HPC (configs/simulation_config.yaml) fitted
``TPOT(N) = alpha + beta * N`` (N = concurrent requests) on vLLM over
A100-40GB MIG slices:

===========  ===========  ======  ======  ========  =======
profile      model        c (/7)  m (/8)  alpha ms  beta ms
===========  ===========  ======  ======  ========  =======
1g.10gb      Qwen2.5-3B   1       2       21.6      0.394
2g.10gb      Qwen2.5-3B   2       2       21.9      0.218
3g.20gb      Qwen2.5-7B   3       4       23.4      0.209
4g.20gb      Qwen2.5-7B   4       4       23.3      0.165
7g.40gb      Qwen2.5-14B  7       8       24.8      0.156
===========  ===========  ======  ======  ========  =======

The fitted alphas grow with the profile only because bigger profiles ran
bigger models. Decoding one token reads all weights once, so alpha is a fixed
overhead plus the weights divided by the slice's memory bandwidth, which is
proportional to its memory slices ``m``. Beta (the cost of one more request
in the batch) follows the compute slices ``c``.

The model
---------
With ``w`` the simulated model's weights relative to the 7B reference
(``weights_scale``; 3B is about 3/7, 14B about 2)::

    alpha(m) = 9.25 + 7.29 * w * 8 / m          [ms]   (least squares, all 5 rows)
    beta(c)  = 0.103 + 0.0403 * 7 / c           [ms]   (least squares, all 5 rows)
    TPOT(N)  = (alpha + beta * max(N, 1)) * speed_factor
    TTFT(P)  = (alpha + 0.1 * w * 7 / c * P) * speed_factor   (P prompt tokens)

With the tabled ``w`` these reproduce every fitted alpha within 4 % and every
beta within 12 %. The bandwidth term is physically sane: 7.29 * 8 / 8 = 14.6 ms
at full A100 bandwidth is 15 GB of bf16 weights read at about 1 TB/s.

The prefill (TTFT) term is not fitted: it is an estimate. One forward pass
reads the weights once (``alpha``), and each prompt token costs about
2 * 7.6 GFLOP on the 7B reference, i.e. about 0.1 ms at half of the A100's
312 bf16 TFLOPS, scaled by ``7 / c`` because prefill is compute-bound.

Both formulas fall as ``m`` or ``c`` grow, so a bigger profile is never slower
for the same model at any N. ``alpha_ms`` / ``beta_ms`` overrides replace the
formulas (tests use tiny values); ``speed_factor`` (> 1 is slower) multiplies
TPOT and TTFT and can be changed at run time with :meth:`PerfModel.with_speed_factor`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

#: Compute and memory slices of a whole GPU (A100, H100, H200).
GPU_COMPUTE_SLICES = 7
GPU_MEMORY_SLICES = 8

ALPHA_FIXED_MS = 9.25
ALPHA_BANDWIDTH_MS = 7.29
BETA_FIXED_MS = 0.103
BETA_COMPUTE_MS = 0.0403
PREFILL_MS_PER_TOKEN_FULL_GPU = 0.1

#: Memory slices of the c>1 profiles, the same on every 7-compute-slice GPU.
_MEMORY_SLICES_BY_COMPUTE = {2: 2, 3: 4, 4: 4, 7: 8}
#: Memory sizes (GB) of the 1g profiles that take two memory slices:
#: A100-40GB 1g.10gb, A100-80GB/H100-80GB 1g.20gb, H100-94GB 1g.24gb, H200 1g.35gb.
#: "1g.10gb" is two slices on the A100-40GB only (one on 80 GB GPUs): pass
#: ``gpu_memory_gb`` or explicit slices to choose.
_TWO_SLICE_1G_GB = frozenset({10, 20, 24, 35})
_PROFILE_RE = re.compile(r"^(?P<c>[1-9])g\.(?P<mem>[0-9]+)gb(?P<me>\+me)?$")


class ProfileError(ValueError):
    """A MIG profile name or slice count the sim engine cannot model."""


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A MIG profile as the performance model sees it: its name and slice counts."""

    name: str
    compute_slices: int
    memory_slices: int

    def __post_init__(self) -> None:
        check_slices(self.compute_slices, self.memory_slices)


def check_slices(compute_slices: int, memory_slices: int) -> None:
    """Raise ProfileError unless the counts fit a 7-compute/8-memory-slice GPU."""
    if not 1 <= compute_slices <= GPU_COMPUTE_SLICES:
        raise ProfileError(f"compute_slices must be 1..7, got {compute_slices}")
    if not 1 <= memory_slices <= GPU_MEMORY_SLICES:
        raise ProfileError(f"memory_slices must be 1..8, got {memory_slices}")


def parse_profile(name: str, *, gpu_memory_gb: float | None = None) -> MigProfile:
    """Parse ``<c>g.<mem>gb[+me]`` into slice counts.

    For c > 1 the memory slices follow from c. For 1g profiles they follow from
    ``gpu_memory_gb`` when given (memory / (gpu memory / 8), rounded), else from
    the table of known two-slice sizes, reading an ambiguous "1g.10gb" as the
    A100-40GB profile (the GPU of the source numbers). ``+me`` is one slice.
    """
    match = _PROFILE_RE.match(name.strip().lower())
    if match is None:
        raise ProfileError(f"profile {name!r} is not of the form <c>g.<mem>gb[+me], e.g. 3g.20gb")
    compute = int(match["c"])
    mem_gb = int(match["mem"])
    if compute == 1:
        if match["me"]:
            memory = 1
        elif gpu_memory_gb is not None:
            if gpu_memory_gb <= 0:
                raise ProfileError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
            memory = max(1, round(mem_gb * GPU_MEMORY_SLICES / gpu_memory_gb))
        else:
            memory = 2 if mem_gb in _TWO_SLICE_1G_GB else 1
    elif match["me"]:
        raise ProfileError(f"profile {name!r}: only 1g profiles have a +me variant")
    elif compute in _MEMORY_SLICES_BY_COMPUTE:
        memory = _MEMORY_SLICES_BY_COMPUTE[compute]
    else:
        raise ProfileError(f"profile {name!r}: no MIG profile has {compute} compute slices")
    if memory > 2 and compute == 1:
        raise ProfileError(f"profile {name!r}: a 1g profile has 1 or 2 memory slices, not {memory}")
    return MigProfile(name=name, compute_slices=compute, memory_slices=memory)


def alpha_ms_for(memory_slices: int, *, weights_scale: float = 1.0) -> float:
    """Per-token decode time of a lone request (ms) on ``memory_slices`` of 8."""
    return ALPHA_FIXED_MS + ALPHA_BANDWIDTH_MS * weights_scale * GPU_MEMORY_SLICES / memory_slices


def beta_ms_for(compute_slices: int) -> float:
    """Extra per-token time (ms) for each concurrent request on ``compute_slices`` of 7."""
    return BETA_FIXED_MS + BETA_COMPUTE_MS * GPU_COMPUTE_SLICES / compute_slices


def prefill_ms_per_token_for(compute_slices: int, *, weights_scale: float = 1.0) -> float:
    """Prefill time (ms) per prompt token on ``compute_slices`` of 7."""
    return PREFILL_MS_PER_TOKEN_FULL_GPU * weights_scale * GPU_COMPUTE_SLICES / compute_slices


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PerfModel:
    """TPOT and TTFT of one simulated model on one slice. Times are in ms."""

    compute_slices: int
    memory_slices: int
    alpha_ms: float
    beta_ms: float
    prefill_ms_per_token: float
    speed_factor: float = 1.0

    def __post_init__(self) -> None:
        check_slices(self.compute_slices, self.memory_slices)
        _check_positive("alpha_ms", self.alpha_ms, allow_zero=True)
        _check_positive("beta_ms", self.beta_ms, allow_zero=True)
        _check_positive("prefill_ms_per_token", self.prefill_ms_per_token, allow_zero=True)
        _check_positive("speed_factor", self.speed_factor)

    @classmethod
    def for_profile(
        cls,
        compute_slices: int,
        memory_slices: int,
        *,
        speed_factor: float = 1.0,
        alpha_ms: float | None = None,
        beta_ms: float | None = None,
        prefill_ms_per_token: float | None = None,
        weights_scale: float = 1.0,
    ) -> PerfModel:
        """The model for a slice; explicit ``alpha_ms``/``beta_ms`` replace the formulas."""
        check_slices(compute_slices, memory_slices)
        _check_positive("weights_scale", weights_scale)
        return cls(
            compute_slices=compute_slices,
            memory_slices=memory_slices,
            alpha_ms=(
                alpha_ms_for(memory_slices, weights_scale=weights_scale)
                if alpha_ms is None
                else alpha_ms
            ),
            beta_ms=beta_ms_for(compute_slices) if beta_ms is None else beta_ms,
            prefill_ms_per_token=(
                prefill_ms_per_token_for(compute_slices, weights_scale=weights_scale)
                if prefill_ms_per_token is None
                else prefill_ms_per_token
            ),
            speed_factor=speed_factor,
        )

    def with_speed_factor(self, speed_factor: float) -> PerfModel:
        """The same model running ``speed_factor`` times slower (> 1) or faster (< 1)."""
        return dataclasses.replace(self, speed_factor=speed_factor)

    def tpot_ms(self, concurrent: int) -> float:
        """Time per output token with ``concurrent`` requests generating (at least 1)."""
        return (self.alpha_ms + self.beta_ms * max(concurrent, 1)) * self.speed_factor

    def ttft_ms(self, prompt_tokens: int) -> float:
        """Time from taking a slot to the first token, for a prompt of ``prompt_tokens``."""
        prefill = self.prefill_ms_per_token * max(prompt_tokens, 0)
        return (self.alpha_ms + prefill) * self.speed_factor
