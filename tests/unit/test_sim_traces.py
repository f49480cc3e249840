"""Trace loading for the simulator: both formats, spreading, and bad files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from migserve_cli.sim.traces import TraceError, load_trace, synthetic_trace

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"


def _azure(
    tmp_path: Path, rows: list[str], header: str = "TIMESTAMP,ContextTokens,GeneratedTokens"
) -> Path:
    path = tmp_path / "t.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _mooncake(tmp_path: Path, rows: Sequence[object]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_azure_rows_are_shifted_to_zero_sorted_and_spread_round_robin(tmp_path: Path) -> None:
    path = _azure(
        tmp_path,
        [
            "2023-11-16 18:17:04.5000000,300,3",
            "2023-11-16 18:17:03.9799600,4808,10",
            "2023-11-16 18:17:05.0000000,100,1",
        ],
    )
    trace = load_trace(path, models=2)
    assert trace.format == "azure"
    assert [r.arrival_s for r in trace.requests] == pytest.approx([0.0, 0.52004, 1.02004])
    assert [(r.prompt_tokens, r.output_tokens) for r in trace.requests] == [
        (4808, 10),
        (300, 3),
        (100, 1),
    ]
    assert [r.model for r in trace.requests] == [0, 1, 0]


def test_mooncake_milliseconds_duration_and_speedup(tmp_path: Path) -> None:
    rows = [
        {"timestamp": t, "input_length": 10, "output_length": 2, "hash_ids": [1]}
        for t in (0, 1000, 2000, 4000)
    ]
    trace = load_trace(_mooncake(tmp_path, rows), models=3, speedup=2.0, duration_s=1.0)
    assert trace.format == "mooncake"
    assert [r.arrival_s for r in trace.requests] == [0.0, 0.5, 1.0]
    assert [r.model for r in trace.requests] == [0, 1, 2]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([], "TIMESTAMP,Context,GeneratedTokens", "lacks ContextTokens"),
        (["yesterday,1,2"], None, "TIMESTAMP 'yesterday' is not a date-time"),
        (["2023-11-16 18:17:03,-5,2"], None, "ContextTokens '-5'"),
        (["2023-11-16 18:17:03,5,x"], None, "GeneratedTokens 'x' is not an integer"),
        (["2023-11-16 18:17:03,5"], None, "2 columns"),
        ([], None, "holds no request"),
    ],
)
def test_bad_azure_files_name_the_line_and_value(
    tmp_path: Path, rows: list[str], header: str | None, message: str
) -> None:
    path = _azure(tmp_path, rows, header) if header else _azure(tmp_path, rows)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "t.jsonl:1: not JSON"),
        ("[1, 2]", "a JSON object is expected"),
        ({"timestamp": 0, "input_length": 5}, "missing output_length"),
        ({"timestamp": "soon", "input_length": 5, "output_length": 1}, "timestamp 'soon'"),
        ({"timestamp": 0, "input_length": 1.5, "output_length": 1}, "input_length 1.5"),
        ({"timestamp": 0, "input_length": True, "output_length": 1}, "input_length True"),
    ],
)
def test_bad_mooncake_rows(tmp_path: Path, row: object, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        load_trace(_mooncake(tmp_path, [row]))


def test_missing_empty_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TraceError, match="empty"):
        load_trace(empty)
    ok = _mooncake(tmp_path, [{"timestamp": 0, "input_length": 1, "output_length": 1}])
    with pytest.raises(TraceError, match="speedup"):
        load_trace(ok, speedup=0)
    with pytest.raises(TraceError, match="models"):
        load_trace(ok, models=0)


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(json.dumps({"timestamp": 5, "input_length": 1, "output_length": 1}) + "\n")
    assert load_trace(path).format == "mooncake"


def test_synthetic_phases() -> None:
    trace = synthetic_trace([(2, 1), (1, 4)], models=2)
    assert [r.arrival_s for r in trace.requests] == [0, 1, 2, 2.25, 2.5, 2.75]
    assert {r.model for r in trace.requests} == {0, 1}


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared traces are not on this machine")
def test_the_shared_traces_parse() -> None:
    azure = load_trace(SHARED / "AzureLLMInferenceTrace_code_2023.csv", models=4)
    assert len(azure.requests) == 8819
    assert 3400 < azure.duration_s < 3500
    mooncake = load_trace(SHARED / "mooncake_synthetic_trace.jsonl")
    assert len(mooncake.requests) == 3993
