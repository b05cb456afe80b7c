"""Planning: decide, before anything is decoded, what each source entry needs.

The store knows which items are complete (their file-level points are
stored, DESIGN.md §3), so a rerun decodes only what is new or was cut off.
Entries are asked about in small batches: one ``completed_items`` call per
batch instead of one per file, and a batch is closed early when its spooled
bytes grow large, so planning never holds much of an archive on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import PointSink, Rejected

if TYPE_CHECKING:
    from ingest.sources import ContainerEnd, SourceEntry, Unchanged

    Streamed = SourceEntry | Rejected | Unchanged | ContainerEnd

PLAN_BATCH_ITEMS = 32
PLAN_BATCH_BYTES = 1 << 30


class Action(StrEnum):
    """What the pipeline does with one source entry."""

    INGEST = "ingest"  # decode, embed, store
    SKIP = "skip"  # the store already holds the complete item
    DUPLICATE = "duplicate"  # same bytes seen at another path: remember the location only
    REJECT = "reject"  # the source could not hand the entry over
    UNCHANGED = "unchanged"  # the ledger holds it settled and it did not change: not read
    CONTAINER = "container"  # a top-level archive was read through (its ledger entry)


@dataclass(frozen=True, slots=True)
class PlannedEntry:
    """One decision; ``entry`` is set for INGEST, SKIP and DUPLICATE."""

    action: Action
    entry: SourceEntry | None = None
    rejected: Rejected | None = None
    unchanged: Unchanged | None = None
    container: ContainerEnd | None = None

    @property
    def uri(self) -> str:
        if self.entry is not None:
            return self.entry.item.source_uri
        if self.unchanged is not None:
            return self.unchanged.entry.uri
        if self.container is not None:
            return self.container.listed.uri
        return self.rejected.uri if self.rejected is not None else ""


def plan_entries(stream: Iterable[Streamed], sink: PointSink, *,
                 batch_items: int = PLAN_BATCH_ITEMS,
                 batch_bytes: int = PLAN_BATCH_BYTES) -> Iterator[PlannedEntry]:
    """Classify a source stream, asking the sink once per batch what is complete.

    Order is kept. Skipped and duplicate entries are released here (their
    spooled copy is not needed); entries to ingest are released by the
    consumer once decoded. If the consumer stops early, entries not yet
    handed out are released.
    """
    batch: list[Streamed] = []
    try:
        for entry in stream:
            batch.append(entry)
            if len(batch) >= batch_items or _spooled_bytes(batch) >= batch_bytes:
                yield from _drain(batch, sink)
        yield from _drain(batch, sink)
    finally:
        for entry in batch:
            if _is_entry(entry):
                entry.release()


def _is_entry(record: Streamed) -> bool:
    from ingest.sources import SourceEntry

    return isinstance(record, SourceEntry)


def _drain(batch: list[Streamed], sink: PointSink) -> Iterator[PlannedEntry]:
    """Decide a batch and hand it out, removing each entry from ``batch`` as it goes."""
    fresh = {e.item.item_id for e in batch if _is_entry(e) and not e.duplicate}
    complete = sink.completed_items(sorted(fresh)) if fresh else set()
    while batch:
        planned = _classify(batch.pop(0), complete)
        if planned.action in (Action.SKIP, Action.DUPLICATE):
            planned.entry.release()
        yield planned


def _spooled_bytes(batch: list[Streamed]) -> int:
    return sum(e.item.size_bytes for e in batch if _is_entry(e))


def _classify(entry: Streamed, complete: set[str]) -> PlannedEntry:
    from ingest.sources import ContainerEnd, Unchanged

    if isinstance(entry, Rejected):
        return PlannedEntry(Action.REJECT, rejected=entry)
    if isinstance(entry, Unchanged):
        return PlannedEntry(Action.UNCHANGED, unchanged=entry)
    if isinstance(entry, ContainerEnd):
        return PlannedEntry(Action.CONTAINER, container=entry)
    if entry.duplicate:
        return PlannedEntry(Action.DUPLICATE, entry=entry)
    if entry.item.item_id in complete:
        return PlannedEntry(Action.SKIP, entry=entry)
    return PlannedEntry(Action.INGEST, entry=entry)


def count_source_items(source: str) -> int | None:
    """Files under a local folder (cheap: no reading), else None (archives stream).

    Used only for progress ETA; sidecar files make it an upper bound.
    """
    root = Path(source.removeprefix("file://"))
    if not root.is_dir():
        return None
    return sum(len(files) for _, _, files in os.walk(root))
