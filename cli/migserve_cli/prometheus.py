"""Optional Prometheus for the local stack: config, start, readiness."""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from migserve_shared.errors import ConfigError

from migserve_cli.procs import ProcessRef, spawn

METRICS_SOURCE_CHOICES = ("auto", "direct", "prometheus")


@dataclass(frozen=True)
class LocalPrometheus:
    url: str
    targets_file: Path
    ref: ProcessRef


def choose_source(requested: str) -> str:
    """Resolve ``auto`` to ``prometheus`` when the binary is on PATH, else ``direct``."""
    if requested not in METRICS_SOURCE_CHOICES:
        raise ConfigError(f"--metrics-source must be one of {METRICS_SOURCE_CHOICES}")
    found = shutil.which("prometheus") is not None
    if requested == "prometheus" and not found:
        raise ConfigError("--metrics-source prometheus: no `prometheus` binary on PATH")
    if requested == "auto":
        return "prometheus" if found else "direct"
    return requested


def render_config(targets_file: Path, scrape_interval_s: int = 1) -> str:
    return (
        "global:\n"
        f"  scrape_interval: {scrape_interval_s}s\n"
        f"  evaluation_interval: {scrape_interval_s}s\n"
        "scrape_configs:\n"
        "  - job_name: migserve\n"
        "    file_sd_configs:\n"
        f"      - files: ['{targets_file}']\n"
        f"        refresh_interval: {scrape_interval_s}s\n"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prometheus(home: Path, log_dir: Path) -> LocalPrometheus:
    """Start a detached Prometheus scraping the targets in ``home/prometheus/targets.json``."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise ConfigError("no `prometheus` binary on PATH")
    root = home / "prometheus"
    (root / "data").mkdir(parents=True, exist_ok=True)
    targets = root / "targets.json"
    if not targets.exists():
        targets.write_text("[]\n")
    config = root / "prometheus.yml"
    config.write_text(render_config(targets))
    port = _free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    ref = spawn("prometheus", argv, env={"PATH": "/usr/bin:/bin"}, log_dir=log_dir)
    return LocalPrometheus(url=f"http://127.0.0.1:{port}", targets_file=targets, ref=ref)


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ConfigError(f"Prometheus at {url} did not become ready within {timeout_s:.0f}s")
