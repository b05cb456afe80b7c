#!/usr/bin/env bash
# Run the whole test suite (CPU, offline, hermetic) on a fresh machine.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
venv=${MEDIABIND_VENV:-.venv}
export RAY_USAGE_STATS_ENABLED=0 RAY_enable_worker_prestart=0
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING
"$venv/bin/ruff" check .
exec "$venv/bin/pytest" --durations=30 "$@"
