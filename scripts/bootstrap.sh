#!/usr/bin/env bash
# Install what migserve needs on a fresh machine: uv, then the locked workspace.
# Sourced by scripts/up.sh and scripts/test.sh.
set -euo pipefail
if ! command -v uv >/dev/null 2>&1; then
  echo "[bootstrap] installing uv" >&2
  python3 -m pip install --quiet --disable-pip-version-check uv || python3 -m pip install --quiet --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --all-packages --frozen --quiet
