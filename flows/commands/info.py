"""`mediabind info`: what this installation would use, and what the store holds."""

from __future__ import annotations

import argparse
import json
import shutil

from schemas import MODALITIES, Settings


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("info", help="show settings, model, checkpoint and store status")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--config-reference", action="store_true",
                        help="print every setting (Markdown), as in docs/configuration.md")
    parser.add_argument("--audit", action="store_true",
                        help="count every item's points in the store and compare them with "
                        "the ledger (exit 1 when they disagree)")
    return parser


def _checkpoint_status(settings: Settings) -> str:
    from embed_workers.model.checkpoint import CheckpointError, resolve_checkpoint
    from embed_workers.model.presets import get_preset

    preset = get_preset(settings.preset)
    if preset.checkpoint_url is None:
        return "not needed (random-weight test preset)"
    try:
        return str(resolve_checkpoint(preset, settings, download_allowed=False))
    except CheckpointError as exc:
        accept = "" if settings.accept_license else "; MEDIABIND_ACCEPT_LICENSE=true allows the download"
        return f"missing: {exc}{accept}"


def _store_status(settings: Settings) -> dict:
    from search.store import open_store

    try:
        with open_store(settings) as store:
            return {**store.collection_info(), "by_modality": store.count_by_modality()}
    except Exception as exc:  # info must report, not fail, whatever the store's state
        return {"error": f"{type(exc).__name__}: {exc}"}


def collect(settings: Settings) -> dict:
    return {
        "preset": settings.preset,
        "checkpoint": _checkpoint_status(settings),
        "licence_accepted": settings.accept_license,
        "store": settings.store_kind,
        "store_path": str(settings.qdrant_dir) if settings.store_kind != "server" else None,
        "qdrant_url": settings.qdrant_url,
        "collection": settings.collection,
        "policy": settings.policy.policy_id,
        "executor": settings.executor,
        "ffmpeg": shutil.which("ffmpeg"),
        "modalities": [m.value for m in MODALITIES],
        "collection_status": _store_status(settings),
    }


def audit(settings: Settings, *, as_json: bool) -> int:
    """The ledger against the store, counted in the store (``StoreLedger.audit``)."""
    from search.store import open_store

    with open_store(settings) as store:
        found = store.ledger().audit()
    if as_json:
        print(json.dumps({"agrees": found.agrees, "items": found.items, "points": found.points,
                          "short": found.short, "unrecorded": found.unrecorded,
                          "duplicates": found.duplicates}, indent=2))
    else:
        print(found.describe())
        for item_id, (recorded, stored) in list(found.short.items())[:20]:
            print(f"  {item_id}: the ledger records {recorded} points, the store holds {stored}")
        for item_id in found.unrecorded[:20]:
            print(f"  {item_id}: stored, not in the ledger (the next run of its source "
                  "records it)")
    return 0 if found.agrees else 1


def run(args: argparse.Namespace) -> int:
    if args.audit:
        return audit(Settings(), as_json=args.json)
    if args.config_reference:
        from schemas.settings import reference_markdown

        print(reference_markdown(), end="")
        return 0
    info = collect(Settings())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        print(f"{key:>18}: {value}")
    return 0
