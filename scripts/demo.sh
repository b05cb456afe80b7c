#!/usr/bin/env bash
# The main job: build a small sample archive, ingest it through the Prefect flow
# on the embedded defaults (Qdrant on disk, local executor), then run a few
# cross-modal searches and print them. See README "Real results" for the model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${MEDIABIND_VENV:-.venv}
export RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec "$venv/bin/python" -m flows.demo "$@"
