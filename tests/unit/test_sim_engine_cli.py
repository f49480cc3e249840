"""The sim engine's command line: arguments to settings, clear errors."""

from __future__ import annotations

import pytest
from migserve_agent.sim_engine.__main__ import build_parser, config_from_args, main


def test_arguments_become_settings() -> None:
    args = build_parser().parse_args(
        ["--profile", "3g.20gb", "--slots", "4", "--model", "m/x", "--alpha-ms", "2",
         "--speed-factor", "1.5", "--startup-delay", "0.5", "--seed", "9"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.profile.compute_slices, config.profile.memory_slices) == (3, 4)
    assert (config.slots, config.model_id, config.alpha_ms) == (4, "m/x", 2.0)
    assert (config.speed_factor, config.startup_delay_s, config.seed) == (1.5, 0.5, 9)


def test_fault_flags() -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert (config.fail_start, config.never_healthy) == (False, False)
    config = config_from_args(build_parser().parse_args(["--fail-start", "--never-healthy"]))
    assert (config.fail_start, config.never_healthy) == (True, True)


def test_fail_start_exits_1_when_loading_ends(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--port", "0", "--startup-delay", "0.1", "--fail-start", "--log-level", "error"])
    assert info.value.code == 1
    assert '"listening"' in capsys.readouterr().out


def test_slice_overrides() -> None:
    args = build_parser().parse_args(["--profile", "1g.10gb", "--memory-slices", "1"])
    profile = config_from_args(args).profile
    assert (profile.compute_slices, profile.memory_slices) == (1, 1)
    args = build_parser().parse_args(["--compute-slices", "2", "--memory-slices", "2"])
    profile = config_from_args(args).profile
    assert (profile.compute_slices, profile.memory_slices) == (2, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "5g.20gb"], "no MIG profile has 5 compute slices"),
        (["--profile", "big"], "is not of the form"),
        (["--slots", "0"], "slots must be >= 1"),
        (["--memory-slices", "9"], "memory_slices must be 1..8"),
        (["--compute-slices", "0"], "compute_slices must be 1..7"),
        (["--speed-factor", "-1"], "speed_factor must be"),
        (["--port", "70000"], "--port must be"),
        (["--slots", "many"], "invalid int value"),
        (["--log-level", "loud"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out
    for flag in ("--profile", "--slots", "--startup-delay", "--speed-factor", "--alpha-ms"):
        assert flag in out
