"""The driver side of a run, shared by every executor.

Events arrive in any order across items (Ray gives no order; local threads
interleave): planning decisions, item starts, encoded segments (metadata only:
the decode workers preprocessed them and the encoder kept the tensors),
rejections and end-of-decode markers. The collector holds an item's segment records
(vectors are small: 4 KB each) until its decode has ended and every segment
it announced is encoded or rejected. A clean item is then written: segments
first, file-level points after them — so a file-level point in the store
means the item is complete, and a run cut off at any moment resumes cleanly.
An item with any rejection writes nothing (the next run tries it again), so
the store never holds half of a broken file.

With a ledger (``schemas.ledger``), each settled location gets an entry,
written right after the upsert that holds its points (``PointWriter.flush``),
so the ledger never runs ahead of the store; a top-level archive read to its
end gets its container entry at ``close``, after everything else.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embed_workers.executors import RunContext
from embed_workers.pipeline import ItemDecoded, ItemStarted, ModalityMean
from embed_workers.report import ItemOutcome, Outcome
from ingest.plan import Action, PlannedEntry
from ingest.sources import ContainerEnd
from schemas import FILE_LEVEL_INDEX, EmbeddingRecord, MediaItem, Modality, Rejected, Segment, Stage
from schemas.extension import is_extension, name_of
from schemas.ledger import EXTENSION_PREFIX, EntryKind, LedgerEntry, version_of

VECTOR_DIM = 1024


@dataclass
class ItemState:
    """An item between its start and its last point."""

    item: MediaItem
    release: Callable[[], None] | None = None
    path: str | None = None  # where its bytes are, to decode it again (Ray lost-item passes)
    duration_s: float | None = None
    expected: dict[str, int] | None = None  # set by ItemDecoded
    settled: Counter[str] = field(default_factory=Counter)  # written or rejected, per modality
    means: dict[str, ModalityMean] = field(default_factory=dict)
    failed: bool = False
    rejections: list[Rejected] = field(default_factory=list)
    decoder: str = ""  # the frame backend its video segments name
    audio_decoder: str = ""  # what decoded its audio segments (pyav, ffmpeg)
    records: list[EmbeddingRecord] = field(default_factory=list)  # held until the item settles

    def is_settled(self) -> bool:
        return self.expected is not None and all(
            self.settled[m] >= n for m, n in self.expected.items())


class PointWriter:
    """Buffers records and writes them in order, in batches (order = file-level last).

    Ledger entries wait with the points they stand for and are recorded only
    after ``sink.write`` returned for those points.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.sink, self.report, self.ledger = ctx.sink, ctx.report, ctx.ledger
        self.batch = ctx.settings.upsert_batch
        self._buffer: list[EmbeddingRecord] = []
        self._entries: list[LedgerEntry] = []
        # (old item, location): a location whose bytes changed; the old item loses it at
        # the end of the run, once every item that may share those paths is stored.
        self.superseded: list[tuple[str, str]] = []

    def add(self, records: Sequence[EmbeddingRecord],
            entries: Sequence[LedgerEntry] = ()) -> None:
        self._buffer.extend(records)
        if self.ledger is not None:
            self._entries.extend(entries)
        if len(self._buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        records, self._buffer = self._buffer, []
        entries, self._entries = self._entries, []
        started = time.perf_counter()
        if records:
            self.sink.write(records)
        if entries:
            self._note_superseded(entries)
            self.ledger.record(entries)
        self.report.add_stage_time("store", time.perf_counter() - started)
        self.report.points_written += len(records)
        for r in records:
            if r.payload["segment_index"] != FILE_LEVEL_INDEX:
                self.report.segments_written[r.payload["modality"]] += 1

    def _note_superseded(self, entries: Sequence[LedgerEntry]) -> None:
        items = [e for e in entries if e.kind is EntryKind.ITEM]
        before = self.ledger.lookup([e.uri for e in items]) if items else {}
        for e in items:
            old = before.get(e.uri)
            if old is not None and old.kind is EntryKind.ITEM and old.item_id != e.item_id:
                self.superseded.append((old.item_id, e.uri))


class Collector:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.report, self.builder = ctx, ctx.report, ctx.builder
        self.writer = PointWriter(ctx)
        self.items: dict[str, ItemState] = {}
        self.duplicates: dict[str, list[str]] = defaultdict(list)
        self._rejected_ids: set[str] = set()
        self._stored_ids: set[str] = set()  # ingested or found stored, by this run
        self._located: dict[str, list[LedgerEntry]] = defaultdict(list)  # after add_locations
        self._containers: list[ContainerEnd] = []
        self._transient: list[str] = []  # locations to retry: their archive is not done

    # --- planning ---------------------------------------------------------------------------
    def planned(self, p: PlannedEntry) -> None:
        """Outcomes decided before decode (skips, duplicates, source rejections)."""
        if p.action is Action.REJECT:
            self._reject_unread(p.rejected)
        elif p.action is Action.SKIP:
            # The bytes may have moved or been copied since they were stored: remember
            # this path too (a no-op in the store when it is already known).
            item = p.entry.item
            self.duplicates[item.item_id].append(item.source_uri)
            self._located[item.item_id].append(self._item_entry(item, item.source_uri))
            self.report.source_bytes_read += item.size_bytes
            if item.item_id not in self._stored_ids:  # not stored by this very run
                self._outcome(item, Outcome.SKIPPED)
        elif p.action is Action.DUPLICATE:
            # Deferred: the first copy may still be in flight, with no points to update yet.
            item = p.entry.item
            uris = list(item.locations or [item.source_uri])
            self.duplicates[item.item_id].extend(uris)
            self._located[item.item_id] += [self._item_entry(item, u) for u in uris]
            self.report.source_bytes_read += item.size_bytes
            self._outcome(item, Outcome.DUPLICATE)
        elif p.action is Action.UNCHANGED:
            entry = p.unchanged.entry
            if entry.item_id and entry.item_id in self._stored_ids:
                return  # settled earlier in this run (from staged output): counted there
            self.report.items_unchanged += 1
            self.report.add_outcome(ItemOutcome(entry.item_id, entry.uri, Outcome.UNCHANGED,
                                                stage=entry.stage, reason=entry.reason))
        elif p.action is Action.CONTAINER:
            self._containers.append(p.container)
        self.tick()

    def begin(self, item: MediaItem, release: Callable[[], None] | None = None,
              path: str | None = None) -> None:
        self.items[item.item_id] = ItemState(item, release, path)
        self.report.source_bytes_read += item.size_bytes
        # Read again after an earlier verdict in this run (staged output replayed, then
        # read anew): this reading's outcome is the one that counts.
        self._rejected_ids.discard(item.item_id)
        uris = set(item.locations or [item.source_uri])
        self._transient = [u for u in self._transient if u not in uris]

    # --- ledger entries ---------------------------------------------------------------------
    def _item_entry(self, item: MediaItem, uri: str, points: int = 0) -> LedgerEntry:
        # An extension's item names the version that embedded it (EXTENSION_PREFIX): a
        # rerun after retraining embeds it again (LedgerEntry.is_final).
        identity = getattr(item.kind, "identity", None)
        return LedgerEntry(uri, item.archive, item.size_bytes, version_of(item.mtime),
                           EntryKind.ITEM, item.item_id, points, run_id=self.report.run_id,
                           registry=f"{EXTENSION_PREFIX}{identity}" if identity else "")

    def _rejected_entry(self, rejected: Rejected, item: MediaItem | None) -> LedgerEntry:
        size = item.size_bytes if item is not None else rejected.size
        mtime = item.mtime if item is not None else rejected.mtime
        transient = rejected.transient or rejected.stage is Stage.EMBED
        if transient:
            self._transient.append(rejected.uri)
        return LedgerEntry(rejected.uri, item.archive if item else self.ctx.source, size,
                           version_of(mtime), EntryKind.REJECTED, rejected.item_id,
                           stage=str(rejected.stage), reason=rejected.reason[:500],
                           transient=transient, registry=self._registry(),
                           run_id=self.report.run_id)

    def _registry(self) -> str:
        from ingest.kinds import registry_fingerprint

        return registry_fingerprint(self.ctx.settings.home)

    # --- decode/encode events ---------------------------------------------------------------
    def started(self, event: ItemStarted) -> None:
        self.items[event.item_id].duration_s = event.duration_s

    def encoded(self, segments: Sequence[Segment], vectors: np.ndarray) -> None:
        touched: list[str] = []
        for segment, vector in zip(segments, vectors, strict=True):
            state = self.items[segment.item_id]
            # the modality itself (an extension's name carries its version)
            modality = segment.modality if is_extension(segment.modality) \
                else Modality(segment.modality)
            state.means.setdefault(modality, ModalityMean(np.zeros(VECTOR_DIM, np.float32)))
            state.means[modality].add(segment, vector)
            state.settled[name_of(modality)] += 1  # plain names, as ItemDecoded counts
            state.decoder = segment.extra.get("decoder", state.decoder)
            state.audio_decoder = segment.extra.get("audio_decoder", state.audio_decoder)
            state.records.append(self.builder.segment_record(state.item, segment, vector,
                                                             state.duration_s))
            touched.append(segment.item_id)
        for item_id in dict.fromkeys(touched):
            self._maybe_finish(item_id)

    def rejected(self, rejected: Rejected, *, modality: str | None = None) -> None:
        """A rejection during decode or encode; ``modality`` is set for a dropped segment."""
        state = self.items.get(rejected.item_id)
        if state is None:
            self._reject_unread(rejected)
            return
        rejected = dataclasses.replace(rejected, uri=rejected.uri or state.item.source_uri)
        state.rejections.append(rejected)
        self.report.rejected.append(rejected)
        # Any rejection fails the item: no file-level point, so the next run tries it again
        # (decoders reject after the segments they managed; those are overwritten then).
        state.failed = True
        if modality is not None:
            state.settled[modality] += 1
        self._maybe_finish(rejected.item_id)

    def decoded(self, event: ItemDecoded) -> None:
        state = self.items[event.item_id]
        state.expected = dict(event.counts)
        state.failed = state.failed or event.failed
        self.report.add_stage_time("decode", event.decode_s)
        self.report.add_stage_time("preprocess", event.prepare_s)
        self._maybe_finish(event.item_id)

    # --- items lost with a worker (Ray) ------------------------------------------------------
    def restart(self, item_id: str) -> None:
        """Forget what a lost attempt delivered for an item, which is decoded again."""
        old = self.items[item_id]
        for rejected in old.rejections:  # the new attempt reports its own
            self.report.rejected.remove(rejected)
        self.items[item_id] = ItemState(old.item, old.release, old.path)

    def lost(self, item_id: str, reason: str) -> None:
        """Give up on an item this run: rejected (nothing written), retried next run."""
        state = self.items.pop(item_id)
        rejected = Rejected(item_id, state.item.source_uri, Stage.DECODE, reason, transient=True)
        state.rejections.append(rejected)
        self.report.rejected.append(rejected)
        self._release(state)
        self._finish_rejected(state)

    # --- completion ---------------------------------------------------------------------------
    def _maybe_finish(self, item_id: str) -> None:
        state = self.items[item_id]
        if not state.is_settled():
            return
        del self.items[item_id]
        # The spooled bytes stay until the item settles, so an item whose worker died
        # after decoding it can still be decoded again (Ray executor).
        self._release(state)
        if state.failed or not state.means:
            self._finish_rejected(state)
        else:
            self._finish_ingested(state)
        self.tick()

    def _finish_ingested(self, state: ItemState) -> None:
        # Segments first, file-level points last (in one ordered buffer): a file-level
        # point in the store means every segment of the item is there too. An item of
        # one segment is that one point, marked whole (``SegmentPolicy.one_point``).
        if self.builder.policy.one_point and len(state.records) == 1:
            segments, completing = [], [self.builder.whole_record(state.records[0])]
        else:
            segments = state.records
            completing = [self.builder.file_level_record(state.item, m, mean,
                                                         state.duration_s)
                          for m, mean in sorted(state.means.items())]
        self.writer.add(segments)
        points = len(segments) + len(completing)
        self.writer.add(completing, [self._item_entry(state.item, uri, points)
                                     for uri in state.item.locations or [state.item.source_uri]])
        self.report.items_completed += 1
        self.report.items_ingested.update(name_of(m) for m in state.means)
        self.report.media_seconds += state.duration_s or 0.0
        self._outcome(state.item, Outcome.INGESTED, state)

    def _finish_rejected(self, state: ItemState) -> None:
        if not state.rejections:
            rejected = Rejected(state.item.item_id, state.item.source_uri, Stage.DECODE,
                                "no segments decoded (empty or unreadable content)")
            state.rejections.append(rejected)
            self.report.rejected.append(rejected)
        self._rejected_ids.add(state.item.item_id)
        first = state.rejections[0]
        transient = next((r for r in state.rejections if r.transient or r.stage is Stage.EMBED),
                         first)
        self.writer.add([], [self._rejected_entry(transient, state.item)])
        self._outcome(state.item, Outcome.REJECTED, state)

    def _reject_unread(self, rejected: Rejected) -> None:
        """A refusal before decode; with an item id, its bytes were read (and hashed)."""
        if rejected.uri:
            self.writer.add([], [self._rejected_entry(rejected, None)])
        if rejected.item_id and rejected.size:
            self.report.source_bytes_read += rejected.size
        self.report.rejected.append(rejected)
        self.report.add_outcome(ItemOutcome(rejected.item_id, rejected.uri, Outcome.REJECTED,
                                            stage=str(rejected.stage), reason=rejected.reason))

    def _outcome(self, item: MediaItem, outcome: Outcome, state: ItemState | None = None) -> None:
        if outcome in (Outcome.INGESTED, Outcome.SKIPPED):
            self._stored_ids.add(item.item_id)
        first = state.rejections[0] if state and state.rejections else None
        self.report.add_outcome(ItemOutcome(
            item.item_id, item.source_uri, outcome, item.kind.value,
            sum(m.count for m in state.means.values()) if state else 0,
            ",".join(sorted(state.means)) if state else "",
            state.duration_s if state else None,
            str(first.stage) if first else "", first.reason if first else "",
            state.decoder if state else "", state.audio_decoder if state else ""))

    # --- end of run ---------------------------------------------------------------------------
    def tick(self) -> None:
        self.ctx.meter.tick(self.report)

    def in_flight(self) -> int:
        return len(self.items)

    def close(self) -> None:
        """Settle what is held, then drop superseded locations; the run's last word."""
        self.settle()
        self._drop_superseded()
        self.ctx.meter.tick(self.report, final=True)

    def settle(self) -> None:
        """Flush the points held, then record the duplicate locations (their items are
        stored now), then the ledger entries of those locations and of the archives read
        through. Also mid-run: after an earlier run's staged output is committed, so the
        plan that follows sees it."""
        self.writer.flush()
        for item_id, uris in self.duplicates.items():
            if item_id not in self._rejected_ids:
                self.ctx.sink.add_locations(item_id, list(dict.fromkeys(uris)))
        located = [e for item_id, entries in self._located.items()
                   if item_id not in self._rejected_ids for e in entries]
        self.writer.add([], located + self._container_entries())
        self.writer.flush()
        self.duplicates.clear()
        self._located.clear()
        self._containers.clear()

    def forget(self, item_id: str) -> None:
        """Drop an item in flight without an outcome: this run reads it again from its
        source (what an earlier run staged of it was incomplete)."""
        self._release(self.items.pop(item_id))
        self.duplicates.pop(item_id, None)
        self._located.pop(item_id, None)

    def _drop_superseded(self) -> None:
        """Paths that now hold other bytes leave the items that held them; an item left
        with no path goes (the old version of a file edited in place)."""
        stale: dict[str, list[str]] = defaultdict(list)
        for item_id, uri in self.writer.superseded:
            stale[item_id].append(uri)
        for item_id, uris in stale.items():
            self.report.points_removed += self.ctx.sink.forget_locations(item_id, uris)

    def _container_entries(self) -> list[LedgerEntry]:
        """Archives read to their end with no member left to retry: settled as a whole.
        An archive read by range in parts is settled once every part ended complete."""
        ends: dict[str, dict[tuple[int, int] | None, ContainerEnd]] = defaultdict(dict)
        for end in self._containers:
            ends[end.listed.uri][end.part] = end  # a part replayed after a retry: once
        done = []
        for uri, parts in ends.items():
            first = next(iter(parts.values()))
            wanted = {None} if first.part is None else {(i, first.part[1])
                                                        for i in range(first.part[1])}
            prefix = uri + "!/"
            if set(parts) == wanted and all(e.complete for e in parts.values()) \
                    and not any(u.startswith(prefix) for u in self._transient):
                done.append(LedgerEntry(uri, self.ctx.source, first.listed.size,
                                        first.listed.version, EntryKind.CONTAINER,
                                        points=sum(e.members for e in parts.values()),
                                        run_id=self.report.run_id))
        return done

    def abandon(self) -> None:
        """Release spooled files of items that will not finish (the run is stopping)."""
        for state in self.items.values():
            self._release(state)

    @staticmethod
    def _release(state: ItemState) -> None:
        if state.release is not None:
            state.release()
            state.release = None
