"""The committer's admission of what the decode actors found, before the collector sees it.

Decode actors read and hash their shards' members on whatever node they run, so
the committer (``ray_commit``) learns what an entry is only from its ``found``
row, and the same bytes may be found twice at once (a copy in another shard).
Each entry's rows carry its key; per key the committer decides once:

- the first copy of an item in this run is admitted: its rows go to the
  ``Collector`` (which keys items by id, so exactly one copy may reach it);
- another copy, or bytes the store already holds complete, only adds a
  location (a duplicate or a skip), and the rest of that key's rows is dropped.

Rows may arrive before their key's ``found`` row (blocks of one task pass
through different encode actors); they wait here until it comes. One reading
of a shard counts at a time (``attempt``): a shard is read once its current
reading delivered every entry up to its end row.
"""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embed_workers.executors import RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.ray_tasks import Found
from embed_workers.pipeline import ItemDecoded, ItemStarted
from ingest.plan import Action, PlannedEntry
from ingest.sources import ContainerEnd, SourceEntry
from schemas import Rejected, Segment

IGNORED = ""  # the key's copy was not admitted: its rows are dropped


class Admission:
    """Routes result rows to the collector, one admitted copy per item."""

    def __init__(self, ctx: RunContext, collector: Collector) -> None:
        self.sink, self.collector, self.report = ctx.sink, collector, ctx.report
        self.keys: dict[str, str] = {}  # key → admitted item id, or IGNORED
        self.admitted: dict[str, str] = {}  # item id → its key
        self.waiting: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.sources: set[str] = set()  # keys of shard-level records already reported
        self.shards_read: set[str] = set()  # every entry of the current reading came in
        self.readings: dict[str, str] = {}  # shard → the reading (attempt) whose rows count
        self.retired: set[str] = set()  # readings cut short (their task was retried)
        self.seen: dict[str, set[str]] = defaultdict(set)  # shard → entry keys this reading
        self.ends: dict[str, int] = {}  # shard → its entries, from this reading's end row
        self.item_shard: dict[str, str] = {}  # item id → the shard it was admitted from
        self.decode_nodes: Counter[str] = Counter()  # node → entries it read or refused
        self.encode_nodes: Counter[str] = Counter()  # node → segments it encoded

    def handle(self, table: pa.Table) -> None:
        rows = [r for r in table.to_pylist() if self._of_current_reading(r)]
        for row in rows:  # decisions first: a block holds segments before its markers
            self._decide(row)
        self._route([r for r in rows if r["event"] not in ("found", "shard", "source")])

    # --- readings ------------------------------------------------------------------------
    def _of_current_reading(self, row: dict[str, Any]) -> bool:
        """One reading per shard counts. Ray retries a decode call whose actor died: the
        new reading of a shard not read to its end replaces the old one, whose items in
        flight start over; rows of a replaced reading, late or not, are dropped."""
        shard, attempt = shard_of(row["key"]), row["attempt"]
        current = self.readings.setdefault(shard, attempt)
        if attempt == current:
            return True
        if attempt in self.retired or shard in self.shards_read:
            return False
        self.retire({shard})
        self.readings[shard] = attempt
        return True

    def retire(self, shard_ids: set[str]) -> None:
        """Those shards are read again: forget what their current readings delivered."""
        self.forget_unsettled(shard_ids)
        self.shards_read -= shard_ids
        for shard in shard_ids:
            self.seen.pop(shard, None)
            self.ends.pop(shard, None)
            if shard in self.readings:
                self.retired.add(self.readings.pop(shard))

    def _note_entry(self, key: str) -> None:
        """A shard is read once its current reading delivered every entry up to its end
        row: a retried reading may come in only from where the old one stopped, and the
        entries it does not deliver are read again (``unsettled_shards``)."""
        shard = shard_of(key)
        if not key.endswith("/end"):
            self.seen[shard].add(key)
        if self.ends.get(shard) == len(self.seen[shard]):
            self.shards_read.add(shard)

    # --- decisions -----------------------------------------------------------------------
    def _decide(self, row: dict[str, Any]) -> None:
        event = row["event"]
        if event == "shard":
            self.ends[shard_of(row["key"])] = pickle.loads(row["blob"]).entries
        if event in ("shard", "found", "source"):
            self._note_entry(row["key"])
        if event == "source" and row["key"] not in self.sources:
            self.sources.add(row["key"])
            self.decode_nodes[row["node"]] += 1
            self._source(pickle.loads(row["blob"]))
        elif event == "found" and row["key"] not in self.keys:
            self.decode_nodes[row["node"]] += 1
            self._found(row["key"], pickle.loads(row["blob"]))
            self._route(self.waiting.pop(row["key"], []))

    def _source(self, record: Rejected | ContainerEnd) -> None:
        if isinstance(record, ContainerEnd):
            self.collector.planned(PlannedEntry(Action.CONTAINER, container=record))
        else:
            self.collector.planned(PlannedEntry(Action.REJECT, rejected=record))

    def _found(self, key: str, found: Found) -> None:
        item = found.item
        entry = SourceEntry(item, Path())
        if found.duplicate or item.item_id in self.admitted:
            self.keys[key] = IGNORED
            self.collector.planned(PlannedEntry(Action.DUPLICATE, entry=entry))
        elif self.sink.completed_items([item.item_id]):
            self.keys[key] = IGNORED
            self.collector.planned(PlannedEntry(Action.SKIP, entry=entry))
        else:
            self.keys[key], self.admitted[item.item_id] = item.item_id, key
            self.item_shard[item.item_id] = shard_of(key)
            self.collector.begin(item)

    # --- routing -------------------------------------------------------------------------
    def _route(self, rows: Iterable[dict[str, Any]]) -> None:
        segments: list[Segment] = []
        vectors: list[np.ndarray] = []
        later: list[dict[str, Any]] = []
        for row in rows:
            if row["encode_s"]:
                self.report.add_stage_time("encode", row["encode_s"])
            decision = self.keys.get(row["key"])
            if decision is None:
                self.waiting[row["key"]].append(row)
            elif decision == IGNORED or decision not in self.collector.items:
                continue  # another copy's rows, or a replay of an item already settled
            elif row["event"] == "segment":
                self.encode_nodes[row["encoder_node"]] += 1
                self.collector.started(ItemStarted(row["item_id"], row["duration_s"]))
                segments.append(pickle.loads(row["blob"]))
                vectors.append(np.frombuffer(row["vector"], dtype=np.float32))
            else:
                later.append(row)
        if segments:
            self.collector.encoded(segments, np.stack(vectors))
        for row in later:  # after the segments of this block: counts settle in one pass
            self._marker(row)

    def _marker(self, row: dict[str, Any]) -> None:
        record = pickle.loads(row["blob"])
        if isinstance(record, ItemStarted):
            self.collector.started(record)
        elif isinstance(record, ItemDecoded):
            self.collector.decoded(record)
        else:
            self.collector.rejected(record, modality=row["modality"] or None)

    # --- lost work -----------------------------------------------------------------------
    def unsettled_shards(self) -> set[str]:
        """Shards holding an item not settled (admitted, or started over and not found
        again yet), or rows whose entry never came."""
        open_items = {self.item_shard[i] for i in self.collector.items if i in self.item_shard}
        return open_items | {shard_of(k) for k in self.waiting}

    def forget_unsettled(self, shard_ids: set[str]) -> None:
        """Before those shards are read again: their items in flight start over, and the
        rows of entries never admitted are dropped (they will come again)."""
        for item_id in [i for i in self.collector.items
                        if self.item_shard.get(i) in shard_ids]:
            self.collector.restart(item_id)
            key = self.admitted.pop(item_id, None)
            if key is not None:
                del self.keys[key]
        for key in [k for k in self.waiting if shard_of(k) in shard_ids]:
            del self.waiting[key]


def shard_of(key: str) -> str:
    """The shard of an entry's key (``<shard id>/<position>``)."""
    return key.split("/", 1)[0]
