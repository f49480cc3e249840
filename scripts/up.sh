#!/usr/bin/env bash
# The README's main command: install what is needed, then start the local stack.
# Arguments go to `migserve up` (for example --detach, --engine sim).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec uv run migserve up "$@"
