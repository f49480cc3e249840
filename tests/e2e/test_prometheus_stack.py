"""End to end: `migserve up` with Prometheus as the metrics source.

Skipped only when no `prometheus` binary is on PATH. Checks that the source is
recorded and shown, that Prometheus answers, that the watcher's file_sd targets
list a ready instance, and that `down` stops Prometheus too.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from migserve_cli import stack as local_stack
from migserve_cli.__main__ import main
from migserve_cli.procs import ProcessRef
from migserve_shared.messages import ModelSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary on PATH"),
]

MODEL = "sim/prom-test"


def _targets(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def test_up_with_prometheus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opts = local_stack.StackOptions(
        home=tmp_path,
        engine="sim",
        models=[ModelSpec(model_id=MODEL, engine="sim", memory_mb=1024, tpot_slo_ms=60)],
        nodes=1,
        gateway_port=0,
        sim_engine_startup_s=0.2,
        metrics_source="prometheus",
    )
    lines: list[str] = []
    prom_refs: list[ProcessRef] = []
    try:
        stack = local_stack.up(opts, lines.append)
        assert stack.metrics_source == "prometheus"
        assert stack.prometheus_url
        recorded = local_stack.read_stack(tmp_path)
        assert recorded is not None and recorded.metrics_source == "prometheus"
        prom_refs = [p.ref() for p in recorded.processes if p.name == "prometheus"]
        assert prom_refs
        assert httpx.get(f"{stack.prometheus_url}/-/ready", timeout=5).status_code == 200

        assert main(["--home", str(tmp_path), "status", "--json"]) == 0
        view = json.loads(capsys.readouterr().out)
        assert view["metrics_source"].startswith("prometheus")

        resp = httpx.post(
            f"{stack.gateway_url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        targets_file = tmp_path / "prometheus" / "targets.json"
        deadline = time.monotonic() + 10
        while not _targets(targets_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _targets(targets_file), targets_file.read_text()
    finally:
        report = local_stack.down(tmp_path, lines.append)
    assert report.leftover_processes == [], lines
    assert not any(r.alive() for r in prom_refs)
