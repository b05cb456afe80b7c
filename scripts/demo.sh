#!/usr/bin/env bash
# The main job: build a small sample archive, ingest it through the Prefect flow
# on the embedded defaults (Qdrant on disk, local executor), then run a few
# cross-modal searches and print them. See README "Real results" for the model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${MEDIABIND_VENV:-.venv}
export RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Prefect's temporary server migrates its database on a first start, which can take
# longer than its default 20 s on a busy two-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
exec "$venv/bin/python" -m flows.demo "$@"
