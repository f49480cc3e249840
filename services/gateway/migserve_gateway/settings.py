"""The gateway's settings, read once from the environment.

| variable | default | meaning |
| --- | --- | --- |
| MIGSERVE_GATEWAY_HOST | 127.0.0.1 | listen address |
| MIGSERVE_GATEWAY_PORT | 8080 | listen port; 0 picks a free one (printed as a JSON line) |
| MIGSERVE_GATEWAY_ID | <hostname>-<pid> | this replica's id (event source, NATS name) |
| MIGSERVE_GATEWAY_REUSE_PORT | false | true: SO_REUSEPORT (gateways share one port) |
| MIGSERVE_COLD_START_TIMEOUT_S | 120 | how long a request is held while no instance is ready |
| MIGSERVE_QUEUE_TIMEOUT_S | 30 | how long a request waits for a busy ready instance |
| MIGSERVE_TOKEN_IDLE_TIMEOUT_S | 60 | longest silence between two replies of a running job |
| MIGSERVE_MAX_BODY_BYTES | 1048576 | largest request body (413 above) |
| MIGSERVE_DEFAULT_MAX_TOKENS | 256 | max_tokens when the request gives none |
| MIGSERVE_MAX_TOKENS_LIMIT | 4096 | largest max_tokens a request may ask for |
| MIGSERVE_DEMAND_INTERVAL_S | 2.0 | re-publish demand for a waiting model at most this often |
| MIGSERVE_SHUTDOWN_GRACE_S | 30 | how long in-flight requests may finish on shutdown |
| MIGSERVE_MAX_PROMPT_CHARS | 131072 | longest prompt, in characters (400 above) |
| MIGSERVE_MAX_IN_FLIGHT | 1024 | requests in flight in this gateway (503 + Retry-After above) |
| MIGSERVE_MAX_CONCURRENT_PER_KEY | 64 | requests in flight per API key (429 + Retry-After above) |
| MIGSERVE_RATE_LIMIT_PER_KEY | 0 (off) | requests a second per API key (429 + Retry-After above) |
| MIGSERVE_RATE_BURST_PER_KEY | 0 (= rate, >= 1) | requests a key may start at once |
| MIGSERVE_MAX_HELD_PER_MODEL | 256 | requests waiting for one model's first instance (503 above) |
| MIGSERVE_MAX_HELD | 1024 | requests waiting for any model's first instance (503 above) |
| MIGSERVE_TGI_MODEL | (the only model) | the model the TGI API (/generate, /info) serves |
| MIGSERVE_API_KEYS_FILE | (required) | inference API keys, one a line, # comments |
| MIGSERVE_ADMIN_KEY_FILE | (required) | the admin key (admin API), one line |
| MIGSERVE_AUTH_DISABLED | false | true turns auth off (local development only; warned at start) |
| MIGSERVE_NATS_URL, MIGSERVE_LOG_FORMAT, MIGSERVE_LOG_LEVEL | | common to every service |
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError

from migserve_gateway.core.admission import AdmissionLimits
from migserve_gateway.core.chat import RequestLimits
from migserve_gateway.core.holding import HoldLimits
from migserve_gateway.core.ratelimit import RateLimits

MIB = 1 << 20
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway reads from its environment."""

    gateway_id: str
    nats: NatsSettings = field(default_factory=NatsSettings)
    host: str = "127.0.0.1"
    port: int = 8080
    reuse_port: bool = False
    cold_start_timeout_s: float = 120.0
    queue_timeout_s: float = 30.0
    token_idle_timeout_s: float = 60.0
    max_body_bytes: int = MIB
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_prompt_chars: int = 131072
    max_in_flight: int = 1024
    max_concurrent_per_key: int = 64
    rate_limit_per_key: float = 0.0
    rate_burst_per_key: float = 0.0
    max_held_per_model: int = 256
    max_held: int = 1024
    tgi_model: str | None = None
    demand_interval_s: float = 2.0
    shutdown_grace_s: float = 30.0
    log_format: str = "json"
    log_level: str = "INFO"
    #: read at start by ``adapters.keyfiles.load_auth_keys`` (both needed unless disabled)
    api_keys_file: str | None = None
    admin_key_file: str | None = None
    auth_disabled: bool = False

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            default_max_tokens=self.default_max_tokens,
            max_tokens_limit=self.max_tokens_limit,
            max_prompt_chars=self.max_prompt_chars,
        )

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_in_flight=self.max_in_flight, max_per_key=self.max_concurrent_per_key
        )

    @property
    def holds(self) -> HoldLimits:
        return HoldLimits(max_per_model=self.max_held_per_model, max_total=self.max_held)

    @property
    def rates(self) -> RateLimits:
        return RateLimits(rate_per_s=self.rate_limit_per_key, burst=self.rate_burst_per_key)


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _log_level(e: Env) -> str:
    level = e.text("MIGSERVE_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"MIGSERVE_LOG_LEVEL={level!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def settings_from_env(env: Mapping[str, str]) -> GatewaySettings:
    """Build the settings; ConfigError names the variable and value that is wrong."""
    e = Env(env)
    gateway_id = e.text("MIGSERVE_GATEWAY_ID", default_gateway_id())
    limit = e.integer("MIGSERVE_MAX_TOKENS_LIMIT", 4096, min=1)
    default_tokens = e.integer("MIGSERVE_DEFAULT_MAX_TOKENS", 256, min=1)
    if default_tokens > limit:
        raise ConfigError(
            f"MIGSERVE_DEFAULT_MAX_TOKENS={default_tokens} is above "
            f"MIGSERVE_MAX_TOKENS_LIMIT={limit}"
        )
    return GatewaySettings(
        gateway_id=gateway_id,
        nats=nats_settings(e, f"migserve-gateway-{gateway_id}"),
        host=e.text("MIGSERVE_GATEWAY_HOST", "127.0.0.1"),
        port=e.integer("MIGSERVE_GATEWAY_PORT", 8080, min=0, max=65535),
        reuse_port=e.flag("MIGSERVE_GATEWAY_REUSE_PORT", False),
        cold_start_timeout_s=e.number("MIGSERVE_COLD_START_TIMEOUT_S", 120.0, min=0.01),
        queue_timeout_s=e.number("MIGSERVE_QUEUE_TIMEOUT_S", 30.0, min=0.01),
        token_idle_timeout_s=e.number("MIGSERVE_TOKEN_IDLE_TIMEOUT_S", 60.0, min=0.01),
        max_body_bytes=e.integer("MIGSERVE_MAX_BODY_BYTES", MIB, min=64),
        default_max_tokens=default_tokens,
        max_tokens_limit=limit,
        max_prompt_chars=e.integer("MIGSERVE_MAX_PROMPT_CHARS", 131072, min=1),
        max_in_flight=e.integer("MIGSERVE_MAX_IN_FLIGHT", 1024, min=1),
        max_concurrent_per_key=e.integer("MIGSERVE_MAX_CONCURRENT_PER_KEY", 64, min=1),
        rate_limit_per_key=e.number("MIGSERVE_RATE_LIMIT_PER_KEY", 0.0, min=0.0),
        rate_burst_per_key=e.number("MIGSERVE_RATE_BURST_PER_KEY", 0.0, min=0.0),
        max_held_per_model=e.integer("MIGSERVE_MAX_HELD_PER_MODEL", 256, min=1),
        max_held=e.integer("MIGSERVE_MAX_HELD", 1024, min=1),
        demand_interval_s=e.number("MIGSERVE_DEMAND_INTERVAL_S", 2.0, min=0.01),
        shutdown_grace_s=e.number("MIGSERVE_SHUTDOWN_GRACE_S", 30.0, min=0.0),
        log_format=e.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")),
        log_level=_log_level(e),
        tgi_model=e.optional("MIGSERVE_TGI_MODEL"),
        api_keys_file=e.optional("MIGSERVE_API_KEYS_FILE"),
        admin_key_file=e.optional("MIGSERVE_ADMIN_KEY_FILE"),
        auth_disabled=e.flag("MIGSERVE_AUTH_DISABLED", False),
    )
