"""Attach ``<file>.json`` sidecar metadata to the entry of ``<file>``.

Sources are read in one forward pass, so the stream is held back by one entry:
an entry is yielded when the next member arrives, and if that member is its
sidecar (``photo.jpg`` then ``photo.jpg.json``, the order of any sorted
listing) the metadata is merged in first. A sidecar that comes *before* its
file is kept (up to ``MAX_EARLY_SIDECARS``) until the file arrives. Sidecars
with no file, or with invalid JSON, become Rejected records. Manifest columns
win over sidecar keys of the same name.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator

from ingest.sources.members import Sidecar, SourceEntry
from schemas import Rejected, Stage

MAX_EARLY_SIDECARS = 1024


def attach_sidecars(stream: Iterator[SourceEntry | Rejected | Sidecar],
                    ) -> Iterator[SourceEntry | Rejected]:
    """``stream`` with sidecars merged into their entries' ``item.meta``."""
    pending: SourceEntry | None = None
    early: OrderedDict[str, Sidecar] = OrderedDict()
    try:
        for record in stream:
            if isinstance(record, Sidecar) and record.error:
                yield Rejected(record.item_id, record.uri, Stage.SOURCE, record.error)
            elif isinstance(record, Sidecar) and pending and record.target == pending.item.member:
                out, pending = with_sidecar(pending, record), None
                yield out
            elif isinstance(record, Sidecar):
                yield from _keep_early(early, record)
            else:
                if pending is not None:
                    out, pending = pending, None
                    yield out
                if isinstance(record, SourceEntry):
                    pending = _with_early(record, early)
                else:
                    yield record
        if pending is not None:
            out, pending = pending, None
            yield out
        yield from (_orphan(s) for s in early.values())
    finally:
        if pending is not None:  # never handed out: its spool file is ours to delete
            pending.release()
        stream.close()  # type: ignore[attr-defined]


def with_sidecar(entry: SourceEntry, sidecar: Sidecar) -> SourceEntry:
    meta = {**(sidecar.meta or {}), **entry.item.meta}
    return dataclasses.replace(entry, item=dataclasses.replace(entry.item, meta=meta))


def _with_early(entry: SourceEntry, early: OrderedDict[str, Sidecar]) -> SourceEntry:
    sidecar = early.pop(entry.item.member, None)
    return entry if sidecar is None else with_sidecar(entry, sidecar)


def _keep_early(early: OrderedDict[str, Sidecar], sidecar: Sidecar) -> Iterator[Rejected]:
    early[sidecar.target] = sidecar
    if len(early) > MAX_EARLY_SIDECARS:
        _, oldest = early.popitem(last=False)
        yield _orphan(oldest)


def _orphan(sidecar: Sidecar) -> Rejected:
    return Rejected(sidecar.item_id, sidecar.uri, Stage.SOURCE,
                    f"JSON metadata with no file {sidecar.target!r} next to it "
                    "(only <file>.json sidecars are read)")
