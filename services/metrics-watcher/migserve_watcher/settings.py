"""The metrics watcher's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from migserve_shared.env import Env, NatsSettings, nats_settings
from migserve_shared.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
METRICS_SOURCES = ("direct",)

ENV_HELP = """\
environment:
  MIGSERVE_NATS_URL             NATS server (default nats://127.0.0.1:4222)
  MIGSERVE_WATCHER_INTERVAL_S   seconds between scrapes and snapshots (default 5)
  MIGSERVE_WATCHER_WINDOW_S     seconds of counters each snapshot covers (default 30)
  MIGSERVE_METRICS_SOURCE       where metrics come from: direct (scrape engines and
                                bridges; the only source so far)
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
    port = e.integer("MIGSERVE_WATCHER_METRICS_PORT", 0, min=0, max=65535)
    return WatcherSettings(
        nats=nats_settings(e, "migserve-watcher"),
        interval_s=interval,
        window_s=window,
        metrics_source=e.choice("MIGSERVE_METRICS_SOURCE", "direct", METRICS_SOURCES),
        scrape_timeout_s=min(2.0, interval),
        metrics_port=port or None,
        metrics_host=e.text("MIGSERVE_WATCHER_METRICS_HOST", "127.0.0.1"),
        log_json=e.choice("MIGSERVE_LOG_FORMAT", "json", ("json", "text")) == "json",
        log_level=e.choice("MIGSERVE_LOG_LEVEL", "INFO", LOG_LEVELS),
    )
