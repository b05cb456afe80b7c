"""Prefect flow ``prune``: remove the points of files that left a source.

Works per item id, never by path prefix across items: an item whose bytes are
gone from the source loses only its own paths inside the source, and its
points go only when no path is left. Orchestration only, like flows/ingest.py,
whose helpers (settings, store opening, task retry policy) it shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow, task

from flows.ingest import IO_TASK, Overrides, settings_for
from flows.locks import source_lock, source_slot
from flows.run import check_source, opened_store
from ingest.sources import normalise_source


@task(name="stored-items", **IO_TASK)
def stored_items_stage(source: str, overrides: Overrides) -> dict[str, list[str]]:
    """item_id → its stored locations, for the items recorded under this archive."""
    with opened_store(settings_for(overrides)) as store:
        rows = store.list_items(archive=source)
    return {row["item_id"]: list(row["source_uri"]) for row in rows}


@task(name="scan", **IO_TASK)
def scan_stage(source: str, overrides: Overrides) -> dict[str, Any]:
    """Hash every file now in the source: item id → its paths, and containers cut short."""
    from ingest.sources import SourceEntry, iter_source

    present: dict[str, list[str]] = {}
    unread: list[str] = []
    for entry in iter_source(source, settings_for(overrides)):
        if isinstance(entry, SourceEntry):
            present.setdefault(entry.item.item_id, []).append(entry.item.source_uri)
            entry.release()
        elif entry.item_id:  # rejected after reading: its bytes are there all the same
            present.setdefault(entry.item_id, []).append(entry.uri)
        else:
            unread.append(entry.uri)
    return {"present": present, "unread": unread}


@task(name="delete", **IO_TASK)
def delete_stage(source: str, overrides: Overrides, gone: Mapping[str, list[str]]) -> int:
    """Forget the vanished items' paths in this source, item by item; an item left with no
    path is deleted. Never by path across items: another item may hold that path now (a
    file edited in place, or a new file written where a moved one was)."""
    removed = 0
    with opened_store(settings_for(overrides)) as store:
        physical = store.collection_info()["physical"]
        for item_id, uris in gone.items():
            kept = [u for u in uris if not _in_source(u, source)]
            removed += set_item_paths(store, physical, item_id, kept)
    return removed


@task(name="relocate", **IO_TASK)
def relocate_stage(overrides: Overrides, moved: Mapping[str, Mapping[str, list[str]]]) -> int:
    """Items still present whose stored paths went stale: their paths become the stored
    ones minus the stale ones plus the current ones, on their own points only."""
    with opened_store(settings_for(overrides)) as store:
        physical = store.collection_info()["physical"]
        for item_id, paths in moved.items():
            stale = set(paths["stale"])
            kept = [u for u in paths["stored"] if u not in stale]
            set_item_paths(store, physical, item_id, list(dict.fromkeys([*kept, *paths["current"]])))
    return len(moved)


def set_item_paths(store: Any, physical: str, item_id: str, paths: list[str]) -> int:
    """Make ``paths`` the item's locations, or delete the item when none is left.

    Selects by ``item_id`` only, so no other item is touched; returns the points removed.
    """
    from search.filters import any_of

    if not paths:
        return store.delete_items([item_id])
    store.backend.set_payload(physical, any_of("item_id", [item_id]), {"source_uri": paths})
    return 0


@flow(name="prune", log_prints=True)
def prune(source: str, collection: str | None = None) -> dict[str, Any]:
    """Remove the points of files whose bytes are no longer anywhere in ``source``.

    Items whose bytes are still there under another path keep their points;
    their stale paths are replaced by the current ones.
    """
    source = normalise_source(source)
    overrides = {"collection": collection}
    check_source(source)
    with source_slot(source), source_lock(settings_for(overrides), source):
        stored = stored_items_stage(source, overrides)
        scan = scan_stage(source, overrides)
        check_scan_complete(stored, scan["unread"])
        unverified = unverified_items(stored, scan["unread"])
        gone = {i: uris for i, uris in stored.items()
                if i not in scan["present"] and i not in unverified}
        moved = stale_locations(source, stored, scan["present"])
        removed = delete_stage(source, overrides, gone) if gone else 0
        relocated = relocate_stage(overrides, moved) if moved else 0
    print(f"prune {source}: {len(stored)} stored items, {len(gone)} gone ({removed} points "
          f"removed), {relocated} with paths updated, {len(unverified)} kept unverified")
    return {"source": source, "items_stored": len(stored), "items_gone": len(gone),
            "points_removed": removed, "items_relocated": relocated, "gone": sorted(gone),
            "unverified": sorted(unverified)}


def unverified_items(stored: Mapping[str, list[str]], unread: list[str]) -> set[str]:
    """Stored items at a path the scan refused without reading (a read error, a limit
    lowered since ingestion): their bytes may well still be there, so they are kept."""
    return {item_id for item_id, uris in stored.items()
            if any(_in_source(uri, path) for uri in uris for path in unread)}


def stale_locations(source: str, stored: Mapping[str, list[str]],
                    present: Mapping[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """Present items with stored paths in this source that no longer hold their bytes."""
    moved = {}
    for item_id, uris in stored.items():
        current = present.get(item_id)
        stale = [u for u in uris if _in_source(u, source) and current and u not in current]
        if stale:
            moved[item_id] = {"stored": list(uris), "current": list(current), "stale": stale}
    return moved


def check_scan_complete(stored: Mapping[str, list[str]], unread: list[str]) -> None:
    """Refuse to prune when a container holding stored items was not read to the end
    (the source itself, or a nested archive): its unread items would look deleted."""
    for container in unread:
        if any(_inside(uri, container) for uris in stored.values() for uri in uris):
            raise RuntimeError(f"{container} could not be read to the end, so its files cannot "
                               "be told apart from deleted ones; not pruning")


def _in_source(uri: str, source: str) -> bool:
    """Whether ``uri`` is a file of ``source`` (a single-file source is its own file)."""
    return uri == source or _inside(uri, source)


def _inside(uri: str, container: str) -> bool:
    """Whether ``uri`` lies in a folder or archive (``/a/x`` is not in ``/a/x2``)."""
    return uri.startswith((container.rstrip("/") + "/", container + "!/"))
