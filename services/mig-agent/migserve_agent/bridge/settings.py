"""The bridge's one settings object, from its command line and the environment.

The agent's process runtime starts the bridge with these flags::

    migserve-bridge --model M --instance-id ID --node NODE
                    --engine-url http://127.0.0.1:PORT --engine-kind sim|llamacpp|tgi|vllm
                    --slots N --metrics-port P [--metrics-host H] [--ack-wait-s S]
                    [--max-attempts N] [--drain-timeout-s S]

and these environment variables: MIGSERVE_NATS_URL (and MIGSERVE_NATS_USER,
MIGSERVE_NATS_PASSWORD, MIGSERVE_NATS_CREDS), MIGSERVE_LOG_FORMAT (json|text),
MIGSERVE_LOG_LEVEL. Errors name the flag or variable and its value.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError
from migserve_shared.messages import EngineKind

from migserve_agent.bridge.dialect import ENGINE_KINDS

_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeSettings:
    """Everything one bridge process needs to know."""

    #: the model id whose jobs this bridge takes (subjects.infer(model))
    model: str
    #: the engine instance this bridge serves (InstanceRecord.instance_id)
    instance_id: str
    node: str
    #: the instance's MIG profile name (a metrics label only); "" when not given
    profile: str = ""
    #: base URL of the engine's HTTP API, e.g. http://127.0.0.1:8080
    engine_url: str
    engine_kind: EngineKind = "sim"
    #: concurrent requests the engine serves; one pull per free slot
    slots: int = 1
    #: 0 picks a free port (announced on stdout)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    #: JetStream ack wait of the shared jobs consumer (s)
    ack_wait_s: float = 30.0
    #: deliveries after which a job whose engine fails before its first token is dropped
    max_attempts: int = 3
    #: how long a SIGTERM waits for jobs in hand before cutting them off (s)
    drain_timeout_s: float = 60.0
    nats: NatsSettings = field(default_factory=NatsSettings)
    log_json: bool = True
    log_level: str = "INFO"
    # Tunables without a flag (tests change them) -----------------------------------
    #: each slot's pull request lasts this long before it is renewed (s)
    fetch_timeout_s: float = 5.0
    #: the engine must send something at least this often once a stream started (s)
    engine_idle_timeout_s: float = 300.0
    engine_connect_timeout_s: float = 5.0
    #: health probes while the engine is not ready: first interval, then doubling to max (s)
    health_interval_s: float = 0.25
    health_max_interval_s: float = 5.0
    #: how long cancels for jobs not (yet) in hand are remembered (s)
    cancel_memory_s: float = 600.0

    def __post_init__(self) -> None:
        _check(
            bool(_MODEL_RE.match(self.model)) and len(self.model) <= 256,
            "--model",
            self.model,
            "is not a valid model id",
        )
        _check(bool(self.instance_id.strip()), "--instance-id", self.instance_id, "is empty")
        _check(bool(self.node.strip()), "--node", self.node, "is empty")
        url = urlsplit(self.engine_url)
        _check(
            url.scheme in ("http", "https") and bool(url.netloc),
            "--engine-url",
            self.engine_url,
            "is not an http(s) URL",
        )
        _check(
            self.engine_kind in ENGINE_KINDS,
            "--engine-kind",
            self.engine_kind,
            f"is not one of {', '.join(ENGINE_KINDS)}",
        )
        _check(1 <= self.slots <= 1024, "--slots", self.slots, "must be 1..1024")
        _check(
            0 <= self.metrics_port <= 65535, "--metrics-port", self.metrics_port, "must be 0..65535"
        )
        _check(self.ack_wait_s >= 1, "--ack-wait-s", self.ack_wait_s, "must be >= 1")
        _check(self.max_attempts >= 1, "--max-attempts", self.max_attempts, "must be >= 1")
        _check(self.drain_timeout_s >= 0, "--drain-timeout-s", self.drain_timeout_s, "must be >= 0")
        _check(self.fetch_timeout_s > 0, "fetch_timeout_s", self.fetch_timeout_s, "must be > 0")

    @property
    def engine_base_url(self) -> str:
        return self.engine_url.rstrip("/")


def _check(ok: bool, name: str, value: object, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migserve-bridge",
        description=(
            "Bridge one engine instance to migserve's job queue: pull jobs for MODEL (one pull "
            "per free engine slot), stream them through the engine's OpenAI-compatible API, "
            'and send the tokens back. Prints {"event":"listening","metrics_port":P} on '
            "stdout once ready; SIGTERM drains. NATS from MIGSERVE_NATS_URL."
        ),
    )
    add = parser.add_argument
    add("--model", required=True, help="model id whose jobs to take")
    add("--instance-id", required=True, help="the engine instance's id")
    add("--node", required=True, help="the node this instance runs on")
    add("--profile", default="", help="the instance's MIG profile, a metrics label (default: none)")
    add("--engine-url", required=True, help="engine base URL, e.g. http://127.0.0.1:8080")
    add("--engine-kind", required=True, choices=ENGINE_KINDS, help="engine API dialect")
    add("--slots", type=int, required=True, help="concurrent requests the engine serves")
    add("--metrics-port", type=int, required=True, help="port for /metrics and /health; 0: any")
    add("--metrics-host", default="127.0.0.1", help="address for /metrics (default: %(default)s)")
    add("--ack-wait-s", type=float, default=30.0, help="JetStream ack wait (default: %(default)s)")
    add(
        "--max-attempts",
        type=int,
        default=3,
        help="deliveries before a job no engine could start is dropped (default: %(default)s)",
    )
    add(
        "--drain-timeout-s",
        type=float,
        default=60.0,
        help="on SIGTERM, wait this long for jobs in hand (default: %(default)s)",
    )
    return parser


def settings_from_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> BridgeSettings:
    """Parse the command line (argparse exits 2 on bad flags) and read the environment.

    Raises ``ConfigError`` naming the flag or variable when a value is invalid.
    """
    args = build_parser().parse_args(argv)
    e = Env(env)
    return BridgeSettings(
        model=args.model,
        instance_id=args.instance_id,
        node=args.node,
        profile=args.profile,
        engine_url=args.engine_url,
        engine_kind=cast(EngineKind, args.engine_kind),
        slots=args.slots,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        ack_wait_s=args.ack_wait_s,
        max_attempts=args.max_attempts,
        drain_timeout_s=args.drain_timeout_s,
        nats=nats_settings(e, f"migserve-bridge:{args.instance_id}"),
        log_json=e.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")) == "json",
        log_level=_log_level(e),
    )


def _log_level(env: Env) -> str:
    level = env.text("MIGSERVE_LOG_LEVEL", "INFO").upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"MIGSERVE_LOG_LEVEL={level!r} is not one of {', '.join(_LOG_LEVELS)}")
    return level
