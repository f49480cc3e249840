#!/usr/bin/env bash
# The README's test command: install what the tests need, then run them all
# (lint, types, import contracts, unit, integration, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
set +e
uv run pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $rc
