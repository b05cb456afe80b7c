"""The driver-side collector: items lost with a worker are decoded again or given up, once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import list_context

from embed_workers.executors.collect import Collector
from embed_workers.pipeline import ItemDecoded, ItemStarted
from embed_workers.report import Outcome
from schemas import Kind, MediaItem, Modality, Rejected, Segment, Stage


@pytest.fixture
def collector(tmp_path):
    ctx, sink = list_context(tmp_path)
    return Collector(ctx), sink


def item(name: str) -> MediaItem:
    return MediaItem(name, "/data", f"{name}.txt", 10, Kind.TEXT, locations=(f"/data/{name}.txt",))


def deliver(collector: Collector, it: MediaItem) -> None:
    """A whole clean attempt: one text segment, encoded, then the end of its decode."""
    collector.started(ItemStarted(it.item_id, None))
    vector = np.zeros(1024, np.float32)
    vector[0] = 1.0
    collector.encoded([Segment(it.item_id, Modality.TEXT, Kind.TEXT, 0, None, None, "hi")],
                      vector[None])
    collector.decoded(ItemDecoded(it.item_id, {"text": 1}, 0.0))


def test_a_restarted_item_is_written_once_with_only_its_new_rejections(collector):
    coll, sink = collector
    released = []
    it = item("a")
    coll.begin(it, lambda: released.append(1), "/spool/a")
    coll.rejected(Rejected(it.item_id, "", Stage.EMBED, "from the lost attempt"), modality="text")
    assert len(coll.report.rejected) == 1
    coll.restart(it.item_id)
    assert coll.report.rejected == [] and coll.items[it.item_id].path == "/spool/a"
    deliver(coll, it)
    coll.close()
    # one text segment in all: stored as the item's one point (segment and file at once)
    assert [(r.payload["segment_index"], r.payload.get("whole")) for r in sink.records] \
        == [(0, 1)]
    assert released == [1]  # the spooled bytes went once the item settled
    assert [o.outcome for o in coll.report.outcomes] == [Outcome.INGESTED]


def test_a_lost_item_is_rejected_once_and_its_bytes_released(collector):
    coll, sink = collector
    released = []
    it = item("b")
    coll.begin(it, lambda: released.append(1), "/spool/b")
    coll.lost(it.item_id, "lost with failed Ray workers")
    coll.close()
    assert sink.records == [] and released == [1] and coll.items == {}
    (rejected,) = coll.report.rejected
    assert rejected.uri == "/data/b.txt" and "failed Ray workers" in rejected.reason
    assert [o.outcome for o in coll.report.outcomes] == [Outcome.REJECTED]


def test_an_item_refused_then_read_again_in_one_run_keeps_its_second_outcome(collector):
    """Staged output replayed first refuses an item (a lost block, a passing failure);
    the run then reads it again and stores it: its other paths are recorded after all."""
    from embed_workers.pipeline import ItemDecoded as Decoded
    from ingest.plan import Action, PlannedEntry
    from ingest.sources import SourceEntry

    coll, sink = collector
    it = item("a")
    coll.begin(it)
    coll.rejected(Rejected(it.item_id, "", Stage.EMBED, "lost with a worker", transient=True),
                  modality="text")
    coll.decoded(Decoded(it.item_id, {"text": 1}, 0.0))
    coll.settle()
    coll.begin(it)
    deliver(coll, it)
    copy = MediaItem(it.item_id, "/data", "copy.txt", 10, Kind.TEXT,
                     locations=("/data/copy.txt",))
    coll.planned(PlannedEntry(Action.DUPLICATE, entry=SourceEntry(copy, Path())))
    coll.close()
    assert sink.locations == [(it.item_id, ["/data/copy.txt"])]
