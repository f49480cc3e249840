#!/usr/bin/env bash
# The README's test command: install what the tests need, then run them all
# (lint, types, import contracts, unit, integration, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# The llamacpp integration and end-to-end tests run the real llama-server: build
# it once per machine (5-12 minutes on 2 cores, progress on stderr; cached by
# version under ${MIGSERVE_CACHE:-~/.cache/migserve}, so later runs skip this).
scripts/build-llama-server.sh >/dev/null
# The metrics watcher's Prometheus source is tested against a real Prometheus
# (Debian's package; no PyPI package ships the server).
if ! command -v prometheus >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing prometheus (Debian package)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "[test] prometheus is not installed: its integration test will be skipped" >&2
  fi
fi
set +e
uv run pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $rc
