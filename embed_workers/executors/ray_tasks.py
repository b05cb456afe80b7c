"""Ray decode tasks: items from the driver's work queue → blocks of prepared model inputs.

Each read task takes ``(item, path)`` jobs from a Ray queue, decodes and
preprocesses them (``decode_events`` then ``prepare_events``), and yields
pyarrow blocks of rows per modality (markers ride along). A task ends when
the queue is empty and the driver has closed the gate, i.e. every job has been
put: ending on a shared gate instead of one end marker per task means a task
retried after its worker died cannot wait forever for a marker the dead
attempt had taken.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Empty, Queue

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
from schemas import Modality, Settings, spec

POLL_S = 0.5
MAX_BATCH_WAIT_S = 2.0

ROW_SCHEMA = pa.schema([
    ("event", pa.string()),  # segment | rejected | decoded
    ("item_id", pa.string()),
    ("modality", pa.string()),  # set for segments and for dropped (embed-rejected) segments
    ("duration_s", pa.float64()),
    # the pickled record: Prepared (decode → actor), Segment metadata (actor → driver),
    # Rejected or ItemDecoded
    ("blob", pa.binary()),
    ("vector", pa.binary()),  # float32 bytes, after encoding
    ("encode_s", pa.float64()),
])


class WorkQueueDatasource(Datasource):
    """``n`` read tasks that take items from the driver's work queue until it is drained
    and the gate is closed."""

    def __init__(self, work: Queue, gate: Queue, tasks: int, settings: Settings,
                 preparer: Preparer) -> None:
        super().__init__()
        self.work, self.gate, self.tasks = work, gate, tasks
        self.settings, self.preparer = settings, preparer

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        work, gate, settings, preparer = self.work, self.gate, self.settings, self.preparer
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(lambda: decode_from_queue(work, gate, settings, preparer), meta,
                         schema=ROW_SCHEMA)
                for _ in range(self.tasks)]


def decode_from_queue(work: Queue, gate: Queue, settings: Settings,
                      preparer: Preparer) -> Iterator[pa.Table]:
    """One decode task: items from the queue → blocks of prepared inputs of one modality
    (plus markers); decoding and preprocessing both run here."""
    count_tokens = count_tokens_fn()
    blocks = _BlockBuilder()
    while True:
        job = _next_job(work, gate)
        if job is None:
            break
        if job:
            item, path = job
            decoded = decode_events(item, Path(path), settings.policy, settings, count_tokens)
            for event in prepare_events(decoded, preparer):
                yield from blocks.add(event)
        yield from blocks.due()
    yield from blocks.drain()


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

    def __init__(self) -> None:
        self.batcher: KeyedBatcher[str, dict[str, Any]] = KeyedBatcher(
            lambda m: spec(m).batch_size, MAX_BATCH_WAIT_S)
        self.markers: list[dict[str, Any]] = []
        self.duration: dict[str, float | None] = {}

    def add(self, event: Any) -> Iterator[pa.Table]:
        if isinstance(event, ItemStarted):
            self.duration[event.item_id] = event.duration_s
        elif isinstance(event, Prepared):
            segment = event.segment
            row = row_for("segment", segment.item_id, event, Modality(segment.modality).value,
                       self.duration.get(segment.item_id))
            yield from self._tables(self.batcher.add(row["modality"], row))
        elif isinstance(event, Unprepared):  # settles one segment of its modality
            self.markers.append(row_for("rejected", event.rejected.item_id, event.rejected,
                                     event.modality, None))
        else:
            if isinstance(event, ItemDecoded):
                self.duration.pop(event.item_id, None)
            self.markers.append(row_for("decoded" if isinstance(event, ItemDecoded) else "rejected",
                                     event.item_id, event, "", None))

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
    return {"event": event, "item_id": item_id, "modality": modality,
            "duration_s": duration_s, "blob": pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
            "vector": None, "encode_s": None}
