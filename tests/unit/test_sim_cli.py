"""``migserve sim`` end to end on a small synthetic trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from migserve_cli.__main__ import main


def _trace(tmp_path: Path) -> Path:
    """Two minutes of an Azure-format trace: quiet, a burst, quiet."""
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    for rate, seconds in ((1, 40), (8, 30), (0.5, 50)):
        for _ in range(int(rate * seconds)):
            minute, sec = divmod(t, 60)
            rows.append(f"2023-11-16 18:{int(minute):02d}:{sec:010.7f},1024,32")
            t += 1 / rate
    path = tmp_path / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_json_output_has_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--trace", str(_trace(tmp_path)), "--json", "--engine-start-s", "5"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["policy"] for p in doc["policies"]] == ["whole-gpu", "static", "hpa", "ours"]
    assert doc["setup"]["gpus"] == 8 and len(doc["setup"]["models"]) == 4
    for policy in doc["policies"]:
        att = policy["attainment"]
        assert att["completed"] + att["failed"] == att["requests"] == doc["setup"]["requests"]
        assert 0 <= att["token_attainment"] <= 1
        assert policy["gpu_hours"] > 0
    whole = doc["policies"][0]
    assert whole["peak_gpus"] == 4
    assert {s["against"] for s in doc["savings"]} == {"whole-gpu", "static", "hpa"}


def test_table_plots_and_a_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {model_id: a/small, memory_mb: 4000, tpot_slo_ms: 30, engine: sim,\n"
        "     weights_scale: 0.2}\n"
        "  - {model_id: b/big, memory_mb: 18000, tpot_slo_ms: 30, engine: sim}\n"
    )
    plots = tmp_path / "plots"
    code = main(
        [
            "sim",
            "--trace",
            str(_trace(tmp_path)),
            "--models",
            str(models),
            "--gpus",
            "3",
            "--policies",
            "whole-gpu,ours",
            "--warm-start",
            "--plots",
            str(plots),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "3 x A100-SXM4-40GB" in out and "engine start 1 s" in out
    assert "a/small" in out and "whole-gpu" in out and "ours" in out
    assert sorted(p.name for p in plots.iterdir()) == [
        "layout-ours.png",
        "layout-whole-gpu.png",
        "tpot-ours.png",
        "tpot-whole-gpu.png",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "magic"], "unknown"),
        (["--gpu-model", "V100"], "not MIG-capable"),
        (["--models", "0"], "at least 1"),
        (["--gpus", "0"], "at least 1"),
    ],
)
def test_bad_flags_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["sim", "--trace", str(_trace(tmp_path)), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_trace_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("when,in,out\n1,2,3\n")
    assert main(["sim", "--trace", str(bad)]) == 2
    assert "lacks TIMESTAMP" in capsys.readouterr().err
