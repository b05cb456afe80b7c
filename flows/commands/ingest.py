"""`mediabind ingest PATH_OR_URL`: embed a folder, archive or fsspec URL into the store.

Progress goes to stderr (one line, refreshed about every 2 s); the report
summary (or its JSON with ``--json``) to stdout, with where the report files
are. Rejected files do not make the exit code non-zero: they are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from embed_workers.report import Progress, RunReport
from schemas import Settings


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ingest", help="embed a folder, archive or URL into the store",
        description="Embed every file of a folder, .tar/.tar.gz/.zip archive or fsspec URL "
                    "into the collection; files already stored are skipped.")
    parser.add_argument("source", metavar="PATH_OR_URL", help="folder, archive or fsspec URL")
    parser.add_argument("--executor", choices=("local", "ray"),
                        help="where decode and encode run (default: MEDIABIND_EXECUTOR or local)")
    parser.add_argument("--preset", help="model preset (default: MEDIABIND_PRESET)")
    parser.add_argument("--checkpoint", help="explicit checkpoint file for the preset")
    parser.add_argument("--collection", help="alias to ingest through (default: mediabind)")
    parser.add_argument("--manifest", help="CSV/Parquet/JSONL of per-file metadata")
    parser.add_argument("--run-id", help="name of this run (default: time + random suffix)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from flows.run import start_run

    settings = settings_from(args)
    outcome = start_run(args.source, settings, executor=args.executor, run_id=args.run_id,
                        manifest=args.manifest, progress=ProgressLine())
    print_report(outcome.report, settings, as_json=args.json)
    if outcome.searched != outcome.collection:
        print(f"note: searches through {outcome.alias!r} use {outcome.searched}, not "
              f"{outcome.collection} where this run wrote ({outcome.report.model_id}, "
              f"{outcome.report.policy}); search it with the same preset and policy after a "
              "reembed, or use another MEDIABIND_COLLECTION for it", file=sys.stderr)
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's choices on top."""
    overrides = {name: getattr(args, name) for name in ("preset", "checkpoint", "collection")
                 if getattr(args, name) is not None}
    return Settings(**overrides)


class ProgressLine:
    """One stderr line, rewritten in place on a terminal, appended otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        if self.tty:
            print(f"\r\033[K{progress.line()}", end="", file=sys.stderr, flush=True)
        else:
            print(progress.line(), file=sys.stderr, flush=True)


def print_report(report: RunReport, settings: Settings, *, as_json: bool) -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)
    folder = settings.runs_path / report.run_id
    if as_json:
        print(json.dumps(report.to_dict() | {"report_dir": str(folder)}, indent=2, default=str))
        return
    print(report.summary())
    print(f"report: {folder / 'report.json'} and {folder / 'items.parquet'}")
