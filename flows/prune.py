"""Prefect flow ``prune``: remove the points of files that left a source.

It reads no content. The source is listed (``ingest.shards``, as a run plans)
and compared with the ledger, which maps each location to the item its bytes
were: a location no longer listed, or inside an archive no longer listed, has
left; a location whose object changed since (size or version) is kept as
*unverified* until the next ingest reads it (an ingest moves a changed path
to its new item by itself). Works per item id, never by path prefix across
items: an item loses only its paths that left, and its points go only when no
path is left. Orchestration only, like flows/ingest.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, task

from flows.ingest import IO_TASK, Overrides, settings_for
from flows.locks import source_lock, source_slot
from flows.run import check_source, opened_store
from ingest.sources import normalise_source
from schemas.ledger import EntryKind, LedgerEntry


class LedgerMissingError(LookupError):
    """The collection holds items of the source but no ledger for it yet."""


@dataclass
class PruneVerdict:
    """Per item: the locations that left the source, and those that cannot be judged."""

    gone: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unverified: set[str] = field(default_factory=set)
    stale_entries: list[str] = field(default_factory=list)  # ledger entries to forget


@task(name="listing", **IO_TASK)
def listing_stage(source: str, overrides: Overrides) -> dict[str, str | None]:
    """Every top-level object of the source now: location → version (no content read)."""
    from ingest.shards import uri_of
    from ingest.sources import plan_source

    plan = plan_source(source, settings_for(overrides))
    return {uri_of(source, m, s.whole_source): _version(m.size, m.version)
            for s in plan.shards for m in s.members}


def _version(size: int | None, version: str | None) -> str:
    return f"{size}|{version}"


@task(name="judge", **IO_TASK)
def judge_stage(source: str, overrides: Overrides,
                listing: Mapping[str, str]) -> dict[str, Any]:
    """Compare the ledger's entries of the source with the listing."""
    with opened_store(settings_for(overrides)) as store:
        ledger = store.ledger()
        entries = list(ledger.entries(source))
        stored = store.list_items(archive=source)
        if not entries and stored:
            raise LedgerMissingError(
                f"the collection holds items of {source} but no ledger for them (they were "
                "ingested before mediabind kept one): ingest the source once (it fills the "
                "ledger without embedding again), then prune")
        claimed = ledger.lookup([u for row in stored for u in row["source_uri"]])
    verdict = judge(source, entries, listing)
    for row in stored:  # paths an item still holds though the ledger gives them to another
        for uri in row["source_uri"]:  # (a run cut off before it moved them)
            owner = claimed.get(uri)
            if owner is not None and owner.kind is EntryKind.ITEM and \
                    owner.item_id != row["item_id"] and uri not in verdict.gone[row["item_id"]]:
                verdict.gone[row["item_id"]].append(uri)
    return {"gone": {k: v for k, v in verdict.gone.items() if v},
            "unverified": sorted(verdict.unverified), "stale_entries": verdict.stale_entries}


def judge(source: str, entries: list[LedgerEntry], listing: Mapping[str, str]) -> PruneVerdict:
    """Which locations left the source; which items sit at changed, unread objects."""
    top = {e.uri: e for e in entries if _top_level(e.uri, source)}
    verdict = PruneVerdict()
    for e in entries:
        outer = top.get(_top_of(e.uri, source))
        now = listing.get(_top_of(e.uri, source))
        if now is None:  # the object (or the archive holding it) left the source
            verdict.stale_entries.append(e.uri)
            if e.kind is EntryKind.ITEM:
                verdict.gone[e.item_id].append(e.uri)
        elif outer is not None and now != _version(outer.size, outer.version) \
                and e.kind is EntryKind.ITEM:
            verdict.unverified.add(e.item_id)  # changed since: the next ingest reads it
    return verdict


def _top_of(uri: str, source: str) -> str:
    """The listed object a location lies in: itself, or the archive holding it."""
    return uri.split("!/", 1)[0] if uri.startswith(source) and "!/" in uri[len(source):] else uri


def _top_level(uri: str, source: str) -> bool:
    return _top_of(uri, source) == uri


@task(name="delete", **IO_TASK)
def delete_stage(overrides: Overrides, verdict: Mapping[str, Any]) -> dict[str, Any]:
    """Gone paths leave their items; an item with no path left is deleted. Then the
    ledger forgets the locations that left."""
    removed, deleted, relocated = 0, [], []
    with opened_store(settings_for(overrides)) as store:
        for item_id, uris in verdict["gone"].items():
            points = store.forget_locations(item_id, uris)
            removed += points
            (deleted if points else relocated).append(item_id)
        store.ledger().forget(verdict["stale_entries"])
    return {"points_removed": removed, "deleted": sorted(deleted),
            "relocated": sorted(relocated)}


@flow(name="prune", log_prints=True)
def prune(source: str, collection: str | None = None) -> dict[str, Any]:
    """Remove the points of files whose bytes are no longer anywhere in ``source``.

    Items whose bytes are still there under another path keep their points and
    lose only their stale paths.
    """
    source = normalise_source(source)
    overrides = {"collection": collection}
    check_source(source)
    with source_slot(source), source_lock(settings_for(overrides), source):
        listing = listing_stage(source, overrides)
        verdict = judge_stage(source, overrides, listing)
        done = delete_stage(overrides, verdict) if verdict["gone"] else {
            "points_removed": 0, "deleted": [], "relocated": []}
    print(f"prune {source}: {len(listing)} objects listed, {len(done['deleted'])} items gone "
          f"({done['points_removed']} points removed), {len(done['relocated'])} kept at "
          f"other paths, {len(verdict['unverified'])} kept unverified (changed since)")
    return {"source": source, "objects_listed": len(listing),
            "items_gone": len(done["deleted"]), "points_removed": done["points_removed"],
            "items_relocated": len(done["relocated"]), "gone": done["deleted"],
            "unverified": verdict["unverified"]}
