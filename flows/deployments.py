"""Deployments of the flows, served from one long-running process (``mediabind serve``).

``ingest_deployment`` and ``prune_deployment`` build Prefect ``RunnerDeployment``
objects (no server needed to build them); ``serve_deployments`` registers them
with the Prefect server and runs their scheduled runs in this process. For a
cluster with work pools, ``prefect.yaml`` declares the same deployments.

Schedules are fired by a Prefect server. The temporary server a process
starts when ``PREFECT_API_URL`` is unset never fires them, so serving refuses
to start without a configured, reachable server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from flows.ingest import ingest_archive
from flows.locks import source_key
from flows.prune import prune
from ingest.sources import normalise_source

NO_SERVER = (
    "schedules need a real Prefect server, and PREFECT_API_URL is not set: the temporary "
    "server a process starts on its own never fires schedules. Start one with "
    "`prefect server start` (or `docker compose up prefect-server`) and set "
    "PREFECT_API_URL=http://127.0.0.1:4200/api; see docs/operations.md"
)

# The installed package's module path, so `serve` works from any working directory
# (a file path would be resolved against the folder serve was started in).
BY_MODULE = EntrypointType.MODULE_PATH

# One run of a deployment at a time; a run due while one is going waits for it.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def schedule_args(cron: str | None, interval: float | None) -> dict[str, Any]:
    """Exactly one of a cron expression or an interval in seconds."""
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one schedule: a cron expression or an interval in seconds")
    if interval is not None and interval <= 0:
        raise ValueError(f"the interval must be a positive number of seconds, got {interval}")
    return {"cron": cron} if cron is not None else {"interval": timedelta(seconds=interval)}


def default_name(prefix: str, source: str) -> str:
    return f"{prefix}-{source_key(source)}"


def ingest_deployment(source: str, *, cron: str | None = None, interval: float | None = None,
                      name: str | None = None, collection: str | None = None,
                      executor: str = "local", preset: str | None = None,
                      manifest: str | None = None) -> RunnerDeployment:
    """A scheduled ``ingest_archive`` of one source."""
    source = normalise_source(source)
    parameters = {"source": source, "collection": collection, "executor": executor,
                  "preset": preset, "manifest": manifest}
    return ingest_archive.to_deployment(
        name=name or default_name("ingest", source), **schedule_args(cron, interval),
        parameters={k: v for k, v in parameters.items() if v is not None},
        concurrency_limit=ONE_AT_A_TIME, tags=["mediabind", "ingest"], entrypoint_type=BY_MODULE,
        description=f"Incremental ingest of {source}")


def prune_deployment(source: str, *, cron: str | None = None, interval: float | None = None,
                     name: str | None = None, collection: str | None = None) -> RunnerDeployment:
    """A scheduled ``prune`` of one source (drops the points of deleted files)."""
    source = normalise_source(source)
    parameters = {"source": source, "collection": collection}
    return prune.to_deployment(
        name=name or default_name("prune", source), **schedule_args(cron, interval),
        parameters={k: v for k, v in parameters.items() if v is not None},
        concurrency_limit=ONE_AT_A_TIME, tags=["mediabind", "prune"], entrypoint_type=BY_MODULE,
        description=f"Remove the points of files deleted from {source}")


def require_server() -> str:
    """The configured Prefect API URL, checked reachable; a clear error otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError(NO_SERVER)
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise RuntimeError(f"the Prefect server at PREFECT_API_URL={url} does not answer "
                           f"({problem}); is `prefect server start` running?")
    return url


def serve_deployments(*deployments: RunnerDeployment, limit: int | None = None) -> None:
    """Register the deployments and run their schedules here until interrupted."""
    from prefect import serve

    require_server()
    serve(*deployments, limit=limit)
