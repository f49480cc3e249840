"""Static checks run as part of the tests: lint, format, types, import contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CODE = ["shared", "services", "cli", "tests", "bench"]


def _run(*argv: str, timeout: float = 600) -> None:
    proc = subprocess.run(
        list(argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


def test_ruff_lint() -> None:
    _run(str(BIN / "ruff"), "check", *_existing(CODE))


def test_ruff_format() -> None:
    _run(str(BIN / "ruff"), "format", "--check", *_existing(CODE))


@pytest.mark.timeout(900)
def test_mypy() -> None:
    """mypy over every package; strict for shared/ and the decision cores (pyproject)."""
    _run(str(BIN / "mypy"), "--cache-dir", str(ROOT / ".mypy_cache"), timeout=900)


def test_import_contracts() -> None:
    """Services import only shared/ and themselves; cores and shared/ import no I/O library."""
    _run(str(BIN / "lint-imports"), "--no-cache")
