"""`mediabind serve`: ingest a source on a schedule from this process (Prefect ``serve``).

    mediabind serve /data/archive --cron "0 * * * *"
    mediabind serve s3://bucket/media --interval 3600 --prune-cron "30 3 * * *"

Needs a Prefect server (``prefect server start``; ``PREFECT_API_URL``): schedules
are fired by the server, never by the temporary one a bare process starts.
For work pools on a cluster, use ``prefect.yaml`` instead (docs/operations.md).
"""

from __future__ import annotations

import argparse

from schemas import get_settings


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "serve", help="ingest a source on a schedule (needs a Prefect server)",
        description="Serve a scheduled ingest deployment of SOURCE from this process. "
                    "Requires PREFECT_API_URL pointing at a running Prefect server.")
    parser.add_argument("source", help="folder, .tar/.tar.gz/.zip, or fsspec URL to ingest")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron expression, e.g. "0 * * * *" (hourly)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
    parser.add_argument("--name", default=None, help="deployment name (default: ingest-<hash>)")
    parser.add_argument("--collection", default=None, help="alias to write through")
    parser.add_argument("--executor", choices=("local", "ray"), default=None,
                        help="default: MEDIABIND_EXECUTOR")
    parser.add_argument("--preset", default=None, help="model preset (default: MEDIABIND_PRESET)")
    parser.add_argument("--manifest", default=None, help="per-file metadata table")
    parser.add_argument("--prune-cron", default=None, metavar="CRON",
                        help="also serve a prune of SOURCE on this cron schedule")
    parser.add_argument("--limit", type=int, default=None,
                        help="most flow runs at once in this process (default: unlimited)")
    return parser


def run(args: argparse.Namespace) -> int:
    from flows.deployments import (
        ingest_deployment,
        prune_deployment,
        require_server,
        serve_deployments,
    )

    require_server()  # before anything else: without a server nothing would ever run
    executor = args.executor or get_settings().executor
    deployments = [ingest_deployment(
        args.source, cron=args.cron, interval=args.interval, name=args.name,
        collection=args.collection, executor=executor, preset=args.preset,
        manifest=args.manifest)]
    if args.prune_cron:
        deployments.append(prune_deployment(args.source, cron=args.prune_cron,
                                            collection=args.collection))
    for deployment in deployments:
        print(f"serving {deployment.name}: {describe_schedule(deployment)}")
    serve_deployments(*deployments, limit=args.limit)
    return 0


def describe_schedule(deployment: object) -> str:
    schedules = getattr(deployment, "schedules", None) or []
    return ", ".join(str(s.schedule) for s in schedules) or "no schedule"
