"""The ledger (``schemas.ledger``) kept in the store itself, beside the points it describes.

Each physical collection ``C`` has a companion collection ``C__ledger`` in the
same engine: one point per location, id ``uuid5(uri)``, a 1-d placeholder
vector and the entry as its payload. So the ledger is exactly as durable as
the points (same WAL, same disk, same server) and is visible wherever the
store is: beside the embedded store for its one holder, and on a Qdrant server
for every driver and worker. Dropping a collection drops its ledger.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.ledger import EntryKind, LedgerEntry
from search.backends import Backend, CollectionSpec
from search.filters import Match, Where, any_of

if TYPE_CHECKING:
    from search.store import VectorStore

LEDGER_SUFFIX = "__ledger"
LEDGER_POLICY = "ledger"
LEDGER_NAMESPACE = uuid.UUID("2b0c9e43-7f61-5d6e-8a1b-4c3d2e1f0a9b")  # never change it
ID_CHUNK = 512
PAGE = 1024
_FIELDS = tuple(f.name for f in fields(LedgerEntry))


@dataclass(frozen=True, slots=True)
class LedgerAudit:
    """Whether the ledger and the points agree, counted in the store itself.

    ``short``: items whose ledger entry claims more (or fewer) points than the
    store holds, as ``item → (ledger's count, store's count)``; the ledger must
    never be ahead of the store. ``unrecorded``: items with points but no entry
    (a run stopped between an upsert and its entry: the next run records them).
    ``duplicates``: points that repeat another's (item, modality, segment index),
    which a rerun must never create.
    """

    items: int  # items the ledger names with points
    points: int  # points counted in the collection
    short: dict[str, tuple[int, int]] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)
    duplicates: int = 0

    @property
    def agrees(self) -> bool:
        return not (self.short or self.unrecorded or self.duplicates)

    def describe(self) -> str:
        if self.agrees:
            return f"ledger and store agree: {self.items} items, {self.points} points"
        return (f"ledger and store disagree: {len(self.short)} items with a different point "
                f"count than recorded, {len(self.unrecorded)} stored items not in the ledger, "
                f"{self.duplicates} duplicate points")


def ledger_name(physical: str) -> str:
    return physical + LEDGER_SUFFIX


def entry_id(uri: str) -> str:
    return str(uuid.uuid5(LEDGER_NAMESPACE, uri))


class StoreLedger:
    """The ledger of one physical collection (created on first use)."""

    def __init__(self, store: VectorStore, physical: str) -> None:
        self.store = store
        self.name = ledger_name(physical)
        self.physical = physical

    def __repr__(self) -> str:
        return f"StoreLedger({self.name!r})"

    @property
    def backend(self) -> Backend:
        return self.store.backend  # the store's engine now (a lent store reopens its own)

    def lookup(self, uris: Sequence[str]) -> dict[str, LedgerEntry]:
        if not self._exists():
            return {}
        found: dict[str, LedgerEntry] = {}
        unique = list(dict.fromkeys(uris))
        for start in range(0, len(unique), ID_CHUNK):
            ids = [entry_id(u) for u in unique[start:start + ID_CHUNK]]
            for point in self.backend.retrieve(self.name, ids, False):
                entry = _entry(point.payload)
                found[entry.uri] = entry
        return found

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        if not entries:
            return
        self._ensure()
        latest = {e.uri: e for e in entries}  # one point per location: the last entry wins
        items = list(latest.values())
        for start in range(0, len(items), self.store.settings.upsert_batch):
            chunk = items[start:start + self.store.settings.upsert_batch]
            ids = [entry_id(e.uri) for e in chunk]
            payloads = [_payload(e) for e in chunk]
            vectors = np.ones((len(chunk), 1), np.float32)
            self.store.retry(lambda i=ids, v=vectors, p=payloads:
                              self.backend.upsert(self.name, i, v, p))

    def entries(self, source: str) -> Iterator[LedgerEntry]:
        if not self._exists():
            return
        offset: Any = None
        where = Where((Match("archive", source),))
        while True:
            page, offset = self.backend.scroll(self.name, where, PAGE, offset, None)
            yield from (_entry(p.payload) for p in page)
            if offset is None or not page:
                return

    def forget(self, uris: Iterable[str]) -> None:
        if not self._exists():
            return
        unique = list(dict.fromkeys(uris))
        for start in range(0, len(unique), ID_CHUNK):
            where = any_of("source_uri", unique[start:start + ID_CHUNK])
            self.store.retry(lambda w=where: self.backend.delete(self.name, w))

    def count(self) -> int:
        return self.backend.count(self.name, None) if self._exists() else 0

    def audit(self) -> LedgerAudit:
        """Compare every item entry's point count with the points the collection holds
        (one pass over both; for a check after a fault, not for every run)."""
        recorded = self._recorded_points()
        stored: Counter[str] = Counter()
        keys: Counter[tuple[Any, ...]] = Counter()
        for payload in self._payloads(self.physical, ["item_id", "modality", "segment_index"]):
            stored[payload["item_id"]] += 1
            keys[(payload["item_id"], payload["modality"], payload["segment_index"])] += 1
        short = {i: (n, stored[i]) for i, n in recorded.items() if stored[i] != n}
        return LedgerAudit(len(recorded), sum(stored.values()), short,
                           sorted(set(stored) - set(recorded)),
                           sum(n - 1 for n in keys.values() if n > 1))

    def _recorded_points(self) -> dict[str, int]:
        recorded: dict[str, int] = {}
        if not self._exists():
            return recorded
        for payload in self._payloads(self.name, ["kind", "item_id", "points"]):
            if payload["kind"] == EntryKind.ITEM.value and payload["points"]:
                recorded[payload["item_id"]] = payload["points"]
        return recorded

    def _payloads(self, name: str, keys: Sequence[str]) -> Iterator[dict[str, Any]]:
        offset: Any = None
        while True:
            page, offset = self.backend.scroll(name, None, PAGE, offset, keys)
            yield from (p.payload for p in page)
            if offset is None or not page:
                return

    def _exists(self) -> bool:
        return self.backend.collection_exists(self.name)

    def _ensure(self) -> None:
        if not self._exists():
            model_id = self.backend.collection_metadata(self.physical)["model_id"]
            self.backend.create_collection(self.name, CollectionSpec(1, model_id, LEDGER_POLICY))


def drop_ledger(backend: Backend, physical: str) -> None:
    """Drop the ledger of a collection being dropped (a no-op when it has none)."""
    name = ledger_name(physical)
    if backend.collection_exists(name):
        backend.drop_collection(name)


# Entries are stored under the payload contract's indexed names where one fits, so the
# engines' keyword indexes serve the lookups (``archive`` = source, ``source_uri`` = uri).
_RENAMES = {"source": "archive", "uri": "source_uri"}


def _payload(entry: LedgerEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["kind"] = entry.kind.value
    return {_RENAMES.get(k, k): v for k, v in data.items()}


def _entry(payload: dict[str, Any]) -> LedgerEntry:
    back = {v: k for k, v in _RENAMES.items()}
    data = {back.get(k, k): v for k, v in payload.items()}
    data = {k: v for k, v in data.items() if k in _FIELDS}
    data["kind"] = EntryKind(data["kind"])
    return LedgerEntry(**data)
