"""`migserve trace` lines for the scaler's events: flags only when set."""

from __future__ import annotations

from migserve_cli.trace import describe
from migserve_shared.errors import ErrorCode
from migserve_shared.messages import CommandDone, ScaleDecided, ScaleFailed

TRACE = "0123456789abcdef" * 2


def decided(**fields: object) -> ScaleDecided:
    values: dict[str, object] = {
        "model_id": "org/m",
        "plan_id": "plan-1",
        "action": "scale_up",
        "reason": "slo.violation",
        "node": "n1",
        "gpu_index": 0,
        "profile": "2g.10gb",
        "start": 0,
        "instance_id": "inst-2",
        "trace_id": TRACE,
        "source": "scaler-a",
        **fields,
    }
    return ScaleDecided(**values)  # type: ignore[arg-type]


def test_make_before_break_line_has_no_break_before_make_field() -> None:
    line = describe(decided())
    assert "break_before_make" not in line
    assert "action=scale_up" in line and "profile=2g.10gb" in line
    assert "start=0" in line and "gpu_index=0" in line  # zeros that mean a place stay
    assert f"trace={TRACE[:12]}" in line


def test_break_before_make_is_shown_when_set() -> None:
    assert "break_before_make=True" in describe(decided(break_before_make=True))


def test_other_false_flags_are_skipped_too() -> None:
    done = CommandDone(command_id="cmd-1", node="n1", instance_id="i1")
    assert "duplicate" not in describe(done)
    assert "duplicate=True" in describe(CommandDone(command_id="c", node="n1", duplicate=True))
    failed = ScaleFailed(model_id="org/m", code=ErrorCode.NO_CAPACITY, reason="full")
    assert "code=no_capacity" in describe(failed)
