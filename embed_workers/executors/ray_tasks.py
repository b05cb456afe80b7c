"""Ray decode tasks: shards from the driver's work queue → blocks of prepared model inputs.

Each read task takes shards (``ingest.shards.Shard``: plain data, no bytes)
from a Ray queue and reads them where it runs (``ingest.sources.iter_shard``:
the members straight from the source, safety checks, spool + sha256, kind),
decodes and preprocesses each entry (``decode_events`` then
``prepare_events``), and yields pyarrow blocks of rows per modality; markers
ride along. Every row of an entry carries the entry's ``key`` (shard id and
position), because the same bytes may be found by two tasks at once and the
driver admits only one copy of an item. A task ends when the queue is empty
and the driver has closed the gate, i.e. every job has been put: ending on a
shared gate instead of one end marker per task means a task retried after its
worker died cannot wait forever for a marker the dead attempt had taken.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Empty, Queue

from embed_workers.encoder import views_per_input
from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    KeyedBatcher,
    Unprepared,
    count_tokens_fn,
    decode_events,
    prepare_events,
)
from embed_workers.prepare import Prepared, Preparer
from ingest.manifest import ManifestRow
from ingest.shards import Shard
from schemas import MediaItem, Modality, Settings

POLL_S = 0.5
MAX_BATCH_WAIT_S = 2.0

ROW_SCHEMA = pa.schema([
    # segment | rejected | decoded | found | source (a Rejected or ContainerEnd of the
    # shard's reading) | shard (a shard read to its end)
    ("event", pa.string()),
    ("key", pa.string()),  # the entry within its shard: ``<shard id>/<position>``
    ("attempt", pa.string()),  # one reading of the shard (a retry reads it again, anew)
    ("node", pa.string()),  # the Ray node that read and decoded it
    ("item_id", pa.string()),
    ("modality", pa.string()),  # set for segments and for dropped (embed-rejected) segments
    ("duration_s", pa.float64()),
    # the pickled record: Prepared (decode → actor), Segment metadata (actor → driver),
    # Rejected or ItemDecoded
    ("blob", pa.binary()),
    ("vector", pa.binary()),  # float32 bytes, after encoding
    ("encoder_node", pa.string()),  # the Ray node of the actor that encoded it
    ("encode_s", pa.float64()),
])


@dataclass(frozen=True, slots=True)
class Found:
    """An entry of a shard was read and hashed: its item (``duplicate``: the same bytes
    came earlier in this task, so only the location is new)."""

    item: MediaItem
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class SourceNote:
    """What reading the shard said besides its entries: a Rejected or a ContainerEnd."""

    record: Any


@dataclass(frozen=True, slots=True)
class ShardRead:
    """Every entry of the shard has been handed on (its events are in earlier rows)."""

    shard_id: str
    entries: int


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """What a read task needs besides the shards: how to read, and what to record."""

    settings: Settings
    preparer: Preparer
    manifest: dict[str, ManifestRow]
    record_containers: bool
    batch_views: dict[str, int]  # model views per block, per modality: the encoder's budget


class WorkQueueDatasource(Datasource):
    """``n`` read tasks that take shards from the driver's work queue until it is drained
    and the gate is closed."""

    def __init__(self, work: Queue, gate: Queue, tasks: int, job: DecodeJob) -> None:
        super().__init__()
        self.work, self.gate, self.tasks, self.job = work, gate, tasks, job

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        work, gate, job = self.work, self.gate, self.job
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(lambda: decode_from_queue(work, gate, job), meta, schema=ROW_SCHEMA)
                for _ in range(self.tasks)]


def decode_from_queue(work: Queue, gate: Queue, job: DecodeJob) -> Iterator[pa.Table]:
    """One read task: shards from the queue → blocks of prepared inputs of one modality
    (plus markers); reading, decoding and preprocessing all run here."""
    import ray

    count_tokens = count_tokens_fn()
    blocks = _BlockBuilder(ray.get_runtime_context().get_node_id(), job.batch_views)
    while True:
        shard = _next_job(work, gate)
        if shard is None:
            break
        if shard:
            blocks.attempt = uuid.uuid4().hex
            for key, event in shard_events(shard, job, count_tokens):
                yield from blocks.add(key, event)
        yield from blocks.due()
    yield from blocks.drain()


def shard_events(shard: Shard, job: DecodeJob,
                 count_tokens: Any) -> Iterator[tuple[str, Any]]:
    """(key, event) for everything reading one shard gives, ending with ``ShardRead``."""
    from ingest.sources import SourceEntry, iter_shard

    settings, position = job.settings, 0
    for record in iter_shard(shard, settings, job.manifest,
                             record_containers=job.record_containers):
        key = f"{shard.shard_id}/{position}"
        position += 1
        if not isinstance(record, SourceEntry):
            yield key, SourceNote(record)
            continue
        with record:
            yield key, Found(record.item, record.duplicate)
            if record.duplicate:
                continue
            decoded = decode_events(record.item, record.path, settings.policy, settings,
                                    count_tokens)
            for event in prepare_events(decoded, job.preparer):
                yield key, event
    yield f"{shard.shard_id}/end", ShardRead(shard.shard_id, position)


def _next_job(work: Queue, gate: Queue) -> tuple | None:
    """A job, () when none came within the poll, None when there will be no more.

    The driver closes the gate only after its last put, so an empty queue seen
    after the gate closed is final (the second look covers a put that landed
    between the timed-out get and the gate check).
    """
    try:
        return work.get(timeout=POLL_S)
    except Empty:
        if not gate.qsize():
            return ()
    try:
        return work.get(block=False)
    except Empty:
        return None


class _BlockBuilder:
    """Batches segment rows per modality; markers ride along with the next block."""

    def __init__(self, node: str, batch_views: dict[str, int]) -> None:
        self.node = node
        self.attempt = ""  # set per shard read
        self.batcher: KeyedBatcher[str, dict[str, Any]] = KeyedBatcher(
            lambda m: batch_views[m], MAX_BATCH_WAIT_S)
        self.markers: list[dict[str, Any]] = []
        self.duration: dict[str, float | None] = {}

    def add(self, key: str, event: Any) -> Iterator[pa.Table]:
        if isinstance(event, ItemStarted):
            self.duration[key] = event.duration_s
            self._mark("started", key, event.item_id, event)
        elif isinstance(event, Prepared):
            segment = event.segment
            row = self._row("segment", key, segment.item_id, event,
                            Modality(segment.modality).value, self.duration.get(key))
            yield from self._tables(self.batcher.add(row["modality"], row,
                                                     views_per_input(event.tensor)))
        elif isinstance(event, Unprepared):  # settles one segment of its modality
            self._mark("rejected", key, event.rejected.item_id, event.rejected, event.modality)
        elif isinstance(event, ItemDecoded):
            self.duration.pop(key, None)
            self._mark("decoded", key, event.item_id, event)
        elif isinstance(event, Found):
            self._mark("found", key, event.item.item_id, event)
        elif isinstance(event, ShardRead):
            self._mark("shard", key, "", event)
        elif isinstance(event, SourceNote):
            self._mark("source", key, "", event.record)
        else:  # a Rejected of the decoder
            self._mark("rejected", key, event.item_id, event)

    def _mark(self, kind: str, key: str, item_id: str, record: Any, modality: str = "") -> None:
        self.markers.append(self._row(kind, key, item_id, record, modality, None))

    def _row(self, kind: str, key: str, item_id: str, record: Any, modality: str,
             duration_s: float | None) -> dict[str, Any]:
        return row_for(kind, item_id, record, modality, duration_s) | {
            "key": key, "node": self.node, "attempt": self.attempt}

    def due(self) -> Iterator[pa.Table]:
        yield from self._tables(self.batcher.due())
        if self.markers and not len(self.batcher):
            yield self._table([])

    def drain(self) -> Iterator[pa.Table]:
        yield from self._tables(self.batcher.drain())
        if self.markers:
            yield self._table([])

    def _tables(self, batches: list[tuple[str, list[dict[str, Any]]]]) -> Iterator[pa.Table]:
        for _, rows in batches:
            yield self._table(rows)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        rows, self.markers = rows + self.markers, []
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def row_for(event: str, item_id: str, record: Any, modality: str,
            duration_s: float | None) -> dict[str, Any]:
    return {"event": event, "key": "", "attempt": "", "node": "", "item_id": item_id,
            "modality": modality,
            "duration_s": duration_s,
            "blob": pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
            "vector": None, "encoder_node": None, "encode_s": None}
