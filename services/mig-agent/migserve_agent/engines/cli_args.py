"""A model's ``engine_args`` turned into checked command-line flags (pure, no I/O).

TGI and vLLM take their tuning as long flags (``--max-model-len 4096``). A
model's ``engine_args`` may set only the flags an adapter lists, each with a
check of its value, so a registry entry can never smuggle arbitrary options
(``--api-key``, ``--host``) into an engine's command line. Keys are
normalized: case and surrounding blanks are ignored and ``_`` means ``-``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from migserve_shared.messages import ModelSpec

from migserve_agent.engines.base import EngineArgsError

Check = Callable[[str], str]

_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag a model may set: how its value is checked, and whether it is a switch."""

    check: Check
    #: a flag without a value: ``true`` adds ``--name``, ``false`` leaves it out
    switch: bool = False


def positive_int(value: str) -> str:
    number = int(value)
    if number < 1:
        raise ValueError("must be an integer >= 1")
    return str(number)


def fraction(value: str) -> str:
    """A float in (0, 1], e.g. a share of the slice's memory."""
    number = float(value)
    if not (math.isfinite(number) and 0 < number <= 1):
        raise ValueError("must be a number in (0, 1]")
    return value


def token(value: str) -> str:
    """A plain name: a revision, a quantization method, a dtype."""
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError("must be 1-128 characters of letters, digits and . _ : / + -")
    return value


def boolean(value: str) -> str:
    lowered = value.lower()
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return "false"
    raise ValueError("must be true or false")


def one_of(*choices: str) -> Check:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


SWITCH = Flag(boolean, switch=True)


def normalize_key(raw: str) -> str:
    return raw.strip().lower().replace("_", "-")


def checked_args(spec: ModelSpec, flags: Mapping[str, Flag], *, engine: str) -> dict[str, str]:
    """The model's ``engine_args`` as ``{flag name: checked value}``.

    ``EngineArgsError`` names the model, the key and the allowed keys or the
    problem with the value.
    """
    out: dict[str, str] = {}
    for raw_key, raw_value in spec.engine_args.items():
        key = normalize_key(raw_key)
        flag = flags.get(key)
        if flag is None:
            allowed = ", ".join(sorted(flags))
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args key {raw_key!r} is not a {engine} "
                f"setting migserve passes on (allowed: {allowed})"
            )
        if key in out:
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args sets {key!r} twice ({raw_key!r})"
            )
        try:
            out[key] = flag.check(raw_value.strip())
        except ValueError as exc:
            raise EngineArgsError(
                f"model {spec.model_id}: engine_args {raw_key}={raw_value!r} is invalid: {exc}"
            ) from exc
    return out


def split_slots(
    spec: ModelSpec, flags: Mapping[str, Flag], *, engine: str, slots_flag: str
) -> tuple[int | None, dict[str, str]]:
    """Checked ``engine_args`` without the slot count, and that count if set.

    A model may give its concurrency as ``slots`` or as the engine's own flag
    (``slots_flag``, e.g. vLLM's ``max-num-seqs``); both must agree. The
    adapter passes the count itself, so it is removed from the other args.
    """
    args = checked_args(spec, {**flags, "slots": Flag(positive_int)}, engine=engine)
    if "slots" in args and slots_flag in args and args["slots"] != args[slots_flag]:
        raise EngineArgsError(
            f"model {spec.model_id}: engine_args slots={args['slots']} and "
            f"{slots_flag}={args[slots_flag]} disagree"
        )
    given = [args.pop(key) for key in ("slots", slots_flag) if key in args]
    return (int(given[0]) if given else None), args


def to_argv(values: Mapping[str, str], flags: Mapping[str, Flag]) -> list[str]:
    """``--name value`` pairs (switches alone, when true), sorted by name."""
    argv: list[str] = []
    for key in sorted(values):
        if flags[key].switch:
            if values[key] == "true":
                argv.append(f"--{key}")
        else:
            argv += [f"--{key}", values[key]]
    return argv
