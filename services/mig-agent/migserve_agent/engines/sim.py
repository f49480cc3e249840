"""The ``sim`` engine adapter: ``python -m migserve_agent.sim_engine`` on a slice.

The sim engine runs no model; its speed follows the performance model of the
profile it is told it runs on. Its slots follow the profile: ``slots_per_compute``
per compute slice, unless the model's engine_args say ``slots``.

Fault injection: engine_args ``fail_start`` and ``never_healthy`` (``true`` or
``false``) become the sim engine's ``--fail-start`` / ``--never-healthy``: the
engine crashes when its loading ends, or never becomes healthy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

from migserve_shared.messages import EngineKind, ModelSpec
from migserve_shared.mig import Profile

from migserve_agent.engines.base import EngineArgsError, EngineLaunch


def _positive_float(value: str) -> str:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a finite number > 0")
    return value


def _non_negative_float(value: str) -> str:
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("must be a finite number >= 0")
    return value


def _positive_int(value: str) -> str:
    if int(value) < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _integer(value: str) -> str:
    int(value)
    return value


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _boolean(value: str) -> str:
    lowered = value.lower()
    if lowered not in _TRUE + _FALSE:
        raise ValueError("must be true or false")
    return "true" if lowered in _TRUE else "false"


#: engine_args keys the sim engine accepts ('-' or '_'), and their checks
_ARGS: dict[str, Callable[[str], str]] = {
    "slots": _positive_int,
    "startup-delay": _non_negative_float,
    "speed-factor": _positive_float,
    "alpha-ms": _positive_float,
    "beta-ms": _non_negative_float,
    "prefill-ms-per-token": _non_negative_float,
    "weights-scale": _positive_float,
    "max-queue": _integer,
    "max-context": _positive_int,
    "default-max-tokens": _positive_int,
    "seed": _integer,
    "fail-start": _boolean,
    "never-healthy": _boolean,
}
#: engine_args that are bare flags of the sim engine (given when "true")
_FLAGS = frozenset({"fail-start", "never-healthy"})


def _engine_args(spec: ModelSpec) -> dict[str, str]:
    """The model's engine_args, normalized to flag names and checked."""
    out: dict[str, str] = {}
    for raw_key, value in spec.engine_args.items():
        key = raw_key.strip().lower().replace("_", "-")
        check = _ARGS.get(key)
        if check is None:
            allowed = ", ".join(sorted(_ARGS))
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args key {raw_key!r} is not a sim engine "
                f"setting (allowed: {allowed})"
            )
        try:
            out[key] = check(value.strip())
        except ValueError as exc:
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args {raw_key}={value!r} is invalid: {exc}"
            ) from exc
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SimEngineAdapter:
    """Launches the sim engine with the profile's compute and memory slices."""

    python: str = sys.executable
    startup_delay_s: float = 0.5
    slots_per_compute: int = 4
    kind: EngineKind = "sim"

    def slots(self, spec: ModelSpec, profile: Profile) -> int:
        override = _engine_args(spec).get("slots")
        return int(override) if override else self.slots_per_compute * profile.compute_slices

    def launch(
        self, *, spec: ModelSpec, profile: Profile, host: str, port: int, slots: int
    ) -> EngineLaunch:
        args = _engine_args(spec)
        args.pop("slots", None)
        args.setdefault("startup-delay", str(self.startup_delay_s))
        argv = [
            self.python, "-m", "migserve_agent.sim_engine",
            "--host", host,
            "--port", str(port),
            "--model", spec.model_id,
            "--profile", profile.name,
            "--compute-slices", str(profile.compute_slices),
            "--memory-slices", str(profile.memory_slices),
            "--slots", str(slots),
        ]  # fmt: skip
        flags = [f"--{key}" for key in sorted(_FLAGS) if args.pop(key, "false") == "true"]
        for key, value in sorted(args.items()):
            argv += [f"--{key}", value]
        argv += flags
        return EngineLaunch(argv=tuple(argv), env={"PYTHONUNBUFFERED": "1"})
