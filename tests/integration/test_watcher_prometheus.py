"""The prometheus source against a real Prometheus scraping a real sim engine.

Prometheus finds the engine through the file_sd file the watcher writes,
scrapes it every 200 ms, and the watcher queries it over 2 s windows. The
engine is slowed down and sped up again while it serves steady traffic.
Skipped when no ``prometheus`` binary is on PATH (or in
``MIGSERVE_PROMETHEUS_BIN``); .ci/run installs the Debian package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from migserve_shared import subjects
from migserve_shared.bus import open_buckets
from migserve_shared.env import NatsSettings
from migserve_shared.messages import ModelSpec, SloRecovered, SloViolation, encode
from migserve_watcher.adapters.file_sd import write_file_sd
from migserve_watcher.app import Watcher
from migserve_watcher.core.slo import SloPolicy
from migserve_watcher.metrics import WatcherMetrics
from migserve_watcher.settings import WatcherSettings
from nats.aio.client import Client as NATS
from test_watcher_slo_events import MODEL, load, next_slo_event, ready_record, start_sim_engine

WINDOW_S = 2.0
PROMETHEUS = os.environ.get("MIGSERVE_PROMETHEUS_BIN") or shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (scripts/test.sh installs Debian's as root)"
)

CONFIG = """\
global:
  scrape_interval: 200ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: migserve
    file_sd_configs:
      - files: ["{sd}"]
        refresh_interval: 1s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def start_prometheus(tmp: Path, sd: Path) -> AsyncIterator[str]:
    assert PROMETHEUS is not None
    config = tmp / "prometheus.yml"
    config.write_text(CONFIG.format(sd=sd))
    url = f"http://127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/-/ready", timeout=1)).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("prometheus did not get ready")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_slo_events_through_a_real_prometheus(nc: NATS, nats_server, tmp_path: Path) -> None:
    sd = tmp_path / "sd" / "migserve.json"
    async with start_sim_engine() as engine:
        record = ready_record(engine)
        write_file_sd(sd, [record])
        async with start_prometheus(tmp_path, sd) as prometheus:
            await run_scenario(nc, nats_server.url, engine, prometheus, sd)


async def run_scenario(nc: NATS, nats_url: str, engine: str, prometheus: str, sd: Path) -> None:
    buckets = await open_buckets(nc.jetstream())
    spec = ModelSpec(model_id=MODEL, memory_mb=1000, tpot_slo_ms=40)
    await buckets.models.put(subjects.model_key(MODEL), encode(spec))
    await buckets.instances.put(subjects.instance_key("inst-1"), encode(ready_record(engine)))
    events = await nc.subscribe(subjects.EVENTS_WILDCARD)
    settings = WatcherSettings(
        nats=NatsSettings(url=nats_url),
        interval_s=0.2,
        window_s=WINDOW_S,
        scrape_timeout_s=1.0,
        metrics_source="prometheus",
        prometheus_url=prometheus,
        file_sd_path=sd,
        slo=SloPolicy(violation_windows=3, underload_windows=1000, cooldown_s=0.5),
    )
    metrics = WatcherMetrics()
    stop_watcher, stop_load = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient() as http, asyncio.TaskGroup() as tg:
        watcher = Watcher(settings=settings, nc=nc, http=http, metrics=metrics)
        tg.create_task(watcher.run(stop_watcher), name="test-watcher")
        loaders = [tg.create_task(load(http, engine, stop_load)) for _ in range(2)]
        try:
            # flat: steady traffic at 20 ms per token for two windows, no event
            assert await next_slo_event(events, 2 * WINDOW_S) is None

            changed = loop.time()
            resp = await http.post(f"{engine}/sim/speed", json={"factor": 4.0})
            assert resp.status_code == 200, resp.text
            violation = await next_slo_event(events, 2 * WINDOW_S)
            assert isinstance(violation, SloViolation), violation
            assert loop.time() - changed <= 2 * WINDOW_S
            ev = violation.evidence
            assert ev.source == "prometheus" and ev.instances == ["inst-1"]
            assert ev.tpot_ms is not None and ev.tpot_ms > 40 and ev.window_s == WINDOW_S
            assert "rate(tgi_request_mean_time_per_token_duration_sum" in ev.query

            resp = await http.post(f"{engine}/sim/speed", json={"factor": 1.0})
            assert resp.status_code == 200, resp.text
            recovered = await next_slo_event(events, 3 * WINDOW_S)
            if isinstance(recovered, SloViolation):
                recovered = await next_slo_event(events, 3 * WINDOW_S)
            assert isinstance(recovered, SloRecovered), recovered
            assert recovered.trace_id == violation.trace_id
        finally:
            stop_load.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*loaders, return_exceptions=True), 5)
            stop_watcher.set()
    await events.unsubscribe()
