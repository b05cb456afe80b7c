"""The committer's admission: one reading of a shard counts, whatever order rows come in.

Ray retries a read task whose worker died: the new reading of its shard
arrives beside late rows of the old one. These feed rows to the real
``Admission`` and ``Collector`` in the orders Ray can produce.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pipeline_helpers import ListSink, list_context

from embed_workers.executors.collect import Collector
from embed_workers.executors.ray_admit import Admission
from embed_workers.executors.ray_tasks import ROW_SCHEMA, Found, ShardRead, row_for
from embed_workers.pipeline import ItemDecoded, ItemStarted
from schemas import Kind, MediaItem, Modality, Segment


@pytest.fixture
def admitted(tmp_path):
    ctx, sink = list_context(tmp_path, "ray")
    collector = Collector(ctx)
    return Admission(ctx, collector), collector, sink


ITEM = MediaItem("x", "/data", "x.txt", 10, Kind.TEXT, locations=("/data/x.txt",))


def row(event: str, key: str, attempt: str, record, modality: str = "") -> dict:
    return row_for(event, ITEM.item_id, record, modality, None) | {
        "key": key, "attempt": attempt, "node": "node-1"}


def found(attempt: str) -> dict:
    return row("found", "s1/0", attempt, Found(ITEM))


def started(attempt: str) -> dict:
    return row("started", "s1/0", attempt, ItemStarted(ITEM.item_id, None))


def segment(attempt: str) -> dict:
    vector = np.zeros(1024, np.float32)
    vector[0] = 1.0
    seg = Segment(ITEM.item_id, Modality.TEXT, Kind.TEXT, 0, None, None, "hi")
    return row("segment", "s1/0", attempt, seg, "text") | {
        "encoder_node": "node-2", "vector": vector.tobytes()}


def decoded(attempt: str) -> dict:
    return row("decoded", "s1/0", attempt, ItemDecoded(ITEM.item_id, {"text": 1}, 0.0))


def end(attempt: str) -> dict:
    return row("shard", "s1/end", attempt, ShardRead("s1", 1))


def feed(admission: Admission, *rows: dict) -> None:
    admission.handle(pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA))


def stored(sink: ListSink) -> list[tuple[int, int]]:
    return sorted((r.payload["segment_index"], r.payload.get("whole", 0))
                  for r in sink.records)


ONE_POINT = [(0, 1)]  # one segment in all: the item's one point


def test_a_retried_reading_replaces_one_cut_short_and_its_late_rows_are_dropped(admitted):
    admission, collector, sink = admitted
    feed(admission, found("a"), started("a"), segment("a"))  # reading a dies here
    feed(admission, found("b"), started("b"))  # Ray's retry reads the shard again
    feed(admission, decoded("a"))  # a late block of the dead reading: would settle x
    assert sink.records == [] and ITEM.item_id in collector.items
    feed(admission, segment("b"), decoded("b"), end("b"))
    collector.close()
    assert stored(sink) == ONE_POINT  # its one segment, once
    assert collector.report.items_completed == 1 and collector.report.segments_written["text"] == 1


def test_a_reading_after_the_shard_was_read_to_its_end_is_ignored(admitted):
    admission, collector, sink = admitted
    feed(admission, found("a"), started("a"), segment("a"), decoded("a"), end("a"))
    feed(admission, found("c"), started("c"), segment("c"), decoded("c"), end("c"))
    collector.close()
    assert stored(sink) == ONE_POINT
    assert collector.report.items_completed == 1 and admission.shards_read == {"s1"}


def test_a_shard_read_again_by_the_driver_counts_its_new_reading(admitted):
    admission, collector, sink = admitted
    feed(admission, found("a"), started("a"))  # the segment's block was lost with a node
    assert admission.unsettled_shards() == {"s1"}
    admission.retire({"s1"})
    feed(admission, found("d"), started("d"), segment("d"), decoded("d"), end("d"))
    feed(admission, segment("a"))  # the old reading, late: dropped
    collector.close()
    assert stored(sink) == ONE_POINT and admission.unsettled_shards() == set()
