"""Read settings from an environment mapping, with errors that name the variable.

Each service builds its one settings object with a function that takes the
mapping as a parameter (``settings_from_env(os.environ)``), so tests pass a
plain dict. Every error names the variable and the value it had.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from migserve_shared.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Env:
    """Typed access to an environment mapping."""

    mapping: Mapping[str, str]

    def text(self, name: str, default: str | None = None) -> str:
        value = self.mapping.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        return value

    def optional(self, name: str) -> str | None:
        value = self.mapping.get(name)
        return value if value else None

    def integer(
        self, name: str, default: int, *, min: int | None = None, max: int | None = None
    ) -> int:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not an integer") from exc
        return _bounded(name, raw, value, min, max)

    def number(
        self, name: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not a number") from exc
        if math.isnan(value) or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}={raw!r} is not a finite number")
        return _bounded(name, raw, value, min, max)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
        return value


def _bounded(name: str, raw: str, value: T, lo: T | None, hi: T | None) -> T:
    if lo is not None and value < lo:  # type: ignore[operator]
        raise ConfigError(f"{name}={raw!r} is below the minimum {lo}")
    if hi is not None and value > hi:  # type: ignore[operator]
        raise ConfigError(f"{name}={raw!r} is above the maximum {hi}")
    return value


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How a service reaches NATS (MIGSERVE_NATS_*)."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    name: str = "migserve"
    #: copies of each JetStream stream and bucket (3 on a 3-server NATS cluster)
    js_replicas: int = 1


def nats_settings(env: Env, name: str) -> NatsSettings:
    url = env.text("MIGSERVE_NATS_URL", "nats://127.0.0.1:4222")
    if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"MIGSERVE_NATS_URL={url!r} is not a nats:// or tls:// URL")
    return NatsSettings(
        url=url,
        user=env.optional("MIGSERVE_NATS_USER"),
        password=env.optional("MIGSERVE_NATS_PASSWORD"),
        creds_file=env.optional("MIGSERVE_NATS_CREDS"),
        name=name,
        js_replicas=env.integer("MIGSERVE_JS_REPLICAS", 1, min=1, max=5),
    )
