"""The metrics watcher's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError

from migserve_watcher.core.slo import SloPolicy, policy_with_headroom

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
METRICS_SOURCES = ("direct", "prometheus")

ENV_HELP = """\
environment:
  MIGSERVE_NATS_URL             NATS server (default nats://127.0.0.1:4222)
  MIGSERVE_WATCHER_INTERVAL_S   seconds between scrapes and snapshots (default 5)
  MIGSERVE_WATCHER_WINDOW_S     seconds of counters each snapshot covers (default 30)
  MIGSERVE_METRICS_SOURCE       where metrics come from: direct (scrape engines and
                                bridges, default) or prometheus (query Prometheus)
  MIGSERVE_PROMETHEUS_URL       Prometheus' HTTP API (default http://127.0.0.1:9090)
  MIGSERVE_PROMETHEUS_FILE_SD   write the ready instances' engine and bridge targets to this
                                Prometheus file_sd JSON file (default: off)
  MIGSERVE_SLO_VIOLATION_WINDOWS  k: windows above the SLO before slo.violation, and
                                at or below SLO x 0.9 x headroom before slo.recovered (default 3)
  MIGSERVE_SLO_UNDERLOAD_WINDOWS  windows below SLO x low watermark with nothing waiting
                                before slo.underload (default 24)
  MIGSERVE_SLO_LOW_WATERMARK    fraction of the SLO under which a model is underloaded
                                (default 0.5)
  MIGSERVE_SLO_COOLDOWN_S       seconds after a model's SLO event before its next (default 60)
  MIGSERVE_WATCHER_SLO_HEADROOM a window counts as above the SLO when its mean TPOT exceeds
                                SLO x this (recovery at SLO x 0.9 x this); below 1 leaves room
                                for a token-level target (default 1.0; `migserve sim` uses 0.9)
  MIGSERVE_WATCHER_METRICS_PORT serve the watcher's own metrics on this port (default: off)
  MIGSERVE_WATCHER_METRICS_HOST address for that port (default 127.0.0.1)
  MIGSERVE_LOG_FORMAT           json or text (default json)
  MIGSERVE_LOG_LEVEL            DEBUG, INFO, WARNING, ERROR (default INFO)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class WatcherSettings:
    nats: NatsSettings
    interval_s: float = 5.0
    window_s: float = 30.0
    metrics_source: str = "direct"
    slo: SloPolicy = field(default_factory=SloPolicy)
    prometheus_url: str = "http://127.0.0.1:9090"
    #: where to write file_sd targets (None: not written)
    file_sd_path: Path | None = None
    #: each scrape gives up after this long
    scrape_timeout_s: float = 2.0
    #: the ``source`` of the events it publishes
    source: str = "metrics-watcher"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_json: bool = True
    log_level: str = "INFO"


def settings_from_env(env: Mapping[str, str]) -> WatcherSettings:
    """Settings from an environment mapping; ConfigError names a bad variable."""
    e = Env(env)
    interval = e.number("MIGSERVE_WATCHER_INTERVAL_S", 5.0, min=0.05, max=3600.0)
    window = e.number("MIGSERVE_WATCHER_WINDOW_S", 30.0, min=0.05, max=86400.0)
    if window < interval:
        raise ConfigError(
            f"MIGSERVE_WATCHER_WINDOW_S={window:g} is shorter than "
            f"MIGSERVE_WATCHER_INTERVAL_S={interval:g}: a window must span at least one interval"
        )
    headroom = e.number("MIGSERVE_WATCHER_SLO_HEADROOM", 1.0, min=0.05, max=1.0)
    low_watermark = e.number("MIGSERVE_SLO_LOW_WATERMARK", 0.5, min=0.01, max=0.9)
    try:
        slo = policy_with_headroom(
            headroom,
            violation_windows=e.integer("MIGSERVE_SLO_VIOLATION_WINDOWS", 3, min=1, max=1000),
            underload_windows=e.integer("MIGSERVE_SLO_UNDERLOAD_WINDOWS", 24, min=1, max=100000),
            low_watermark=low_watermark,
            cooldown_s=e.number("MIGSERVE_SLO_COOLDOWN_S", 60.0, min=0.0, max=86400.0),
        )
    except ValueError as exc:
        raise ConfigError(
            f"MIGSERVE_SLO_LOW_WATERMARK={low_watermark:g} must be at most the recovery "
            f"threshold 0.9 x MIGSERVE_WATCHER_SLO_HEADROOM={headroom:g}: {exc}"
        ) from exc
    file_sd = e.text("MIGSERVE_PROMETHEUS_FILE_SD", "")
    port = e.integer("MIGSERVE_WATCHER_METRICS_PORT", 0, min=0, max=65535)
    return WatcherSettings(
        nats=nats_settings(e, "migserve-watcher"),
        interval_s=interval,
        window_s=window,
        metrics_source=e.choice("MIGSERVE_METRICS_SOURCE", "direct", METRICS_SOURCES),
        slo=slo,
        prometheus_url=e.text("MIGSERVE_PROMETHEUS_URL", "http://127.0.0.1:9090"),
        file_sd_path=Path(file_sd) if file_sd else None,
        scrape_timeout_s=min(2.0, interval),
        metrics_port=port or None,
        metrics_host=e.text("MIGSERVE_WATCHER_METRICS_HOST", "127.0.0.1"),
        log_json=e.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")) == "json",
        log_level=e.choice("MIGSERVE_LOG_LEVEL", "INFO", LOG_LEVELS),
    )
