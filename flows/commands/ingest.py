"""`mediabind ingest PATH_OR_URL`: embed a folder, archive or fsspec URL into the store.

Progress goes to stderr (one line, refreshed about every 2 s); the report
summary (or its JSON with ``--json``) to stdout, with where the report files
are. Rejected files do not make the exit code non-zero: they are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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
    from embed_workers.executors import check_run_id, check_weights, preset_model_id
    from embed_workers.pipeline import new_run_id, run_ingest
    from search.store import open_store

    settings = settings_from(args)
    try:
        model_id = preset_model_id(settings.preset)
    except KeyError as exc:  # an unknown preset is a user error, not a crash
        raise ValueError(exc.args[0]) from None
    check_source(args.source)  # before anything is created in the store
    check_run_id(args.run_id or new_run_id())
    check_weights(settings.preset, settings.checkpoint and str(settings.checkpoint), settings)
    with open_store(settings) as store:
        target = store.ensure_collection(model_id, settings.policy)
        report = run_ingest(args.source, store, settings=settings, executor=args.executor,
                            run_id=args.run_id, manifest=args.manifest,
                            progress=ProgressLine())
        searched = store.backend.get_alias(settings.collection)
    print_report(report, settings, as_json=args.json)
    if searched != target:
        print(f"note: searches through {settings.collection!r} use {searched}, not {target} "
              f"where this run wrote ({model_id}, {settings.policy.policy_id}); search it with "
              "the same preset and policy after a reembed, or use another "
              "MEDIABIND_COLLECTION for it", file=sys.stderr)
    return 0


def check_source(source: str) -> None:
    """A local source must exist; URLs are checked when they are opened."""
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source not found: {path}")


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
