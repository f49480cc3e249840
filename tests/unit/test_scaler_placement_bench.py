"""bench/scaler_decision.py still runs (tiny sizes), so the benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaler_decision.py"


def test_bench_runs_with_tiny_sizes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("scaler_decision_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look the module up
    spec.loader.exec_module(bench)
    # exit status 2 would mean the optimised placement chose differently from the naive one
    assert bench.main(["--gpus", "20", "--decisions", "5"]) == 0
    out = capsys.readouterr().out
    for case in ("choose naive", "choose", "moves cold", "moves"):
        assert any(line.startswith(case) for line in out.splitlines()), out
    assert "p99 ms" in out
    assert "target: p99 <= 50 ms" in out
