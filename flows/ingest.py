"""Prefect flows: ingest an archive, re-embed a collection (blue/green); prune is in flows/prune.py.

Orchestration only: a run is started by ``flows.run.start_run`` (the one run
entry the CLI and the demo use too) and the rest is ``search.store``. Tasks
pass references (sources, run ids, collection names, report paths, counts),
never arrays, and there is one task per stage, never one per file or segment.
The embedded store belongs to one process, so every task opens it in the
flow's own process (tasks are called, not submitted) and closes it before the
next task opens it again.

A failed flow is rerun as is: the ledger and the store's completeness skip
what is already stored and point ids are deterministic, so a rerun resumes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.locks import source_key
from flows.run import (
    PERMANENT_ERRORS,
    check_run,
    check_source,
    opened_store,
    recorded_manifest,
    start_run,
)
from ingest.sources import normalise_source
from schemas import Settings, collection_name
from schemas.payload import COMPLETING_POINTS

# I/O stages retry with exponential backoff (2, 4, 8 s, jittered); what no retry can fix
# (``flows.run.PERMANENT_ERRORS``: a missing source or checkpoint, an unaccepted licence,
# a store or source another process holds) fails at once.
IO_RETRIES = 3
Overrides = Mapping[str, Any]


def _retry_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures only: a missing source stays missing."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return False


IO_TASK = {"retries": IO_RETRIES, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
           "retry_jitter_factor": 0.5, "retry_condition_fn": _retry_io, "cache_policy": NO_CACHE}


def settings_for(overrides: Overrides) -> Settings:
    """Settings from the environment with this run's overrides (None values ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def model_id_of(settings: Settings) -> str:
    from embed_workers.model.presets import get_preset

    return get_preset(settings.preset).model_id


# --- ingest ------------------------------------------------------------------------------


@task(name="check", cache_policy=NO_CACHE)
def check_stage(source: str, overrides: Overrides) -> str:
    """Source, run id and weights, before anything is created; returns the run id."""
    return check_run(source, settings_for(overrides)).run_id


@task(name="run", **IO_TASK)
def run_stage(source: str, overrides: Overrides, run_id: str,
              manifest: str | None) -> dict[str, Any]:
    """The one run entry (``flows.run.start_run``); returns where the report went.

    A retry resumes: what the failed attempt stored is skipped, through the ledger.
    """
    settings = settings_for(overrides)
    logger = get_run_logger()
    outcome = start_run(source, settings, executor=settings.executor, run_id=run_id,
                        manifest=manifest, progress=lambda p: logger.info(p.line()))
    logger.info(outcome.report.summary())
    return {"report": str(outcome.report_json), "markdown": str(outcome.report_markdown),
            "collection": outcome.collection, "alias": outcome.alias}


@task(name="finalise", cache_policy=NO_CACHE)
def finalise_stage(source: str, paths: Mapping[str, str]) -> dict[str, Any]:
    """Publish the report as a Markdown artifact; return the run's summary counts."""
    report = json.loads(Path(paths["report"]).read_text())
    create_markdown_artifact(Path(paths["markdown"]).read_text(), key=f"ingest-{source_key(source)}",
                             description=f"mediabind ingest of {source}")
    return summarise(report, paths)


def summarise(report: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    keys = ("source", "run_id", "model_id", "policy", "items_seen", "items_completed",
            "items_skipped", "items_duplicate", "items_unchanged", "items_rejected",
            "points_written", "source_bytes_read", "notes")
    return {**{k: report[k] for k in keys}, "collection": paths["collection"],
            "alias": paths["alias"], "report": paths["report"]}


def ingest_source(source: str, overrides: Overrides, manifest: str | None) -> dict[str, Any]:
    """check → run → finalise; the run task takes the source's locks (``start_run``)."""
    run_id = check_stage(source, overrides)
    paths = run_stage(source, overrides, run_id, manifest)
    return finalise_stage(source, paths)


@flow(name="ingest-archive", log_prints=True)
def ingest_archive(source: str, collection: str | None = None, executor: str = "local",
                   preset: str | None = None, manifest: str | None = None) -> dict[str, Any]:
    """Ingest what is new in ``source`` (a folder, .tar/.tar.gz/.zip or fsspec URL).

    ``collection``: the alias to write through (default MEDIABIND_COLLECTION);
    ``preset``: the model (default MEDIABIND_PRESET); ``manifest``: a CSV/JSONL/
    Parquet table of per-file metadata, recorded under ``HOME/manifests`` so that
    ``reembed`` applies it again (the last one given for a source wins). Two runs
    of one source never overlap.
    """
    source = normalise_source(source)
    overrides = {"collection": collection, "executor": executor, "preset": preset}
    return ingest_source(source, overrides, manifest)


# --- reembed -----------------------------------------------------------------------------


@task(name="inventory", **IO_TASK)
def inventory_stage(overrides: Overrides) -> dict[str, Any]:
    """What the alias serves now: its collection, model, policy, item count and sources."""
    settings = settings_for(overrides)
    with opened_store(settings) as store:
        info = store.collection_info()
        items = store.list_items()
    sources = sorted({row["archive"] for row in items if row.get("archive")})
    return {"physical": info["physical"], "model_id": info["model_id"], "policy": info["policy"],
            "items": len(items), "sources": sources}


@task(name="verify", **IO_TASK)
def verify_stage(target: Overrides) -> dict[str, Any]:
    """Items complete in the current collection (the alias) that the new one lacks."""
    settings = settings_for(target)
    with opened_store(settings) as store:
        old = complete_item_ids(store)
        store.ensure_collection(model_id_of(settings), settings.policy)  # reads the new one
        done = store.completed_items(old)
    return {"complete_old": len(old), "missing": sorted(set(old) - done)}


def complete_item_ids(store: Any) -> list[str]:
    """Ids of the items complete in the collection behind the alias (a file-level point,
    or the whole point of a single-segment item)."""
    points = store.scroll(COMPLETING_POINTS, limit=store.count(COMPLETING_POINTS))
    return sorted({p.payload["item_id"] for p in points})


class IncompleteReembedError(RuntimeError):
    """The new collection lacks items of the current one; the alias was not swapped."""


def check_complete(verified: Mapping[str, Any], old: str, new: str, force: bool) -> None:
    missing = verified["missing"]
    if not missing:
        return
    line = (f"{new} lacks {len(missing)} of the {verified['complete_old']} items complete in "
            f"{old} (e.g. {', '.join(m[:12] for m in missing[:3])})")
    if force:
        print(f"{line}; swapping anyway (force=True)")
        return
    raise IncompleteReembedError(
        f"{line}; the alias still points at {old} and nothing was dropped. Read the run "
        "reports for the rejected files, prune files deleted since they were ingested, then "
        "rerun reembed (it resumes), or pass force=True to swap to the incomplete collection")


@task(name="swap", **IO_TASK)
def swap_stage(overrides: Overrides, new_physical: str, drop_old: bool) -> dict[str, str | None]:
    """Point the alias at the new collection; drop the old one only when asked."""
    settings = settings_for(overrides)
    with opened_store(settings) as store:
        old = store.swap_alias(new_physical)
        if drop_old and old and old != new_physical:
            store.drop_collection(old)
    return {"alias": settings.collection, "new": new_physical, "old": old,
            "old_dropped": str(bool(drop_old and old))}


@flow(name="reembed", log_prints=True)
def reembed(collection: str | None = None, preset: str | None = None,
            segment_s: float | None = None, stride_s: float | None = None,
            video_crops: int | None = None, one_point_items: bool = True,
            executor: str = "local", drop_old: bool = False,
            force: bool = False) -> dict[str, Any]:
    """Blue/green re-embed: re-ingest every source of the current collection into the
    collection of another model or segment policy, then swap the alias to it.

    Each source is re-ingested with the manifest last given for it (see
    ``ingest_archive``). The alias is swapped only when every item complete in the
    current collection is complete in the new one (``force=True`` swaps anyway).
    The old collection stays (searchable again by swapping back) unless ``drop_old``.
    ``one_point_items``: the new collection's point layout (one point per
    single-segment item, the default; so ``reembed()`` with no other argument moves
    a collection of the earlier layout over).
    """
    base = {"collection": collection, "executor": executor}
    target = {**base, "preset": preset, "segment_s": segment_s, "stride_s": stride_s,
              "video_crops": video_crops, "one_point_items": one_point_items}
    current = inventory_stage(base)
    new_physical = planned_collection(target)
    manifests = source_manifests(settings_for(base), current["sources"])
    check_reembed(current, new_physical, manifests)
    runs = [ingest_source(src, target, manifests[src]) for src in current["sources"]]
    check_complete(verify_stage(target), current["physical"], new_physical, force)
    swapped = swap_stage(base, new_physical, drop_old)
    print(f"alias {swapped['alias']!r}: {swapped['old']} -> {swapped['new']}")
    return {**swapped, "sources": current["sources"], "runs": [r["run_id"] for r in runs],
            "points_written": sum(r["points_written"] for r in runs)}


def source_manifests(settings: Settings, sources: list[str]) -> dict[str, str | None]:
    return {src: recorded_manifest(settings, src) for src in sources}


def planned_collection(overrides: Overrides) -> str:
    settings = settings_for(overrides)
    return collection_name(model_id_of(settings), settings.policy)


def check_reembed(current: Mapping[str, Any], new_physical: str,
                  manifests: Mapping[str, str | None]) -> None:
    """Refuse before any work: same collection, vanished sources or manifests."""
    if not current["sources"]:
        raise ValueError("the current collection records no sources: nothing to re-embed")
    if new_physical == current["physical"]:
        raise ValueError(f"{new_physical} is already the current collection: choose another "
                         "preset or segment policy")
    missing = [s for s in current["sources"] if not _reachable(s)]
    if missing:
        raise FileNotFoundError(
            f"sources of the current collection are gone: {missing}; the new collection would "
            "lack their items. Delete their points first (search.store: "
            "open_store().delete_source(SOURCE)), or restore the sources")
    lost = {s: m for s, m in manifests.items() if m is not None and not Path(m).is_file()}
    if lost:
        raise FileNotFoundError(f"manifests recorded for sources are gone: {lost}; restore "
                                "them, or the new collection would lack their metadata")


def _reachable(source: str) -> bool:
    try:
        check_source(source)
    except FileNotFoundError:
        return False
    return True

