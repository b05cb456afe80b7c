"""Planning against the real embedded store: skip complete items, defer duplicates,
ask once per batch, and never leak a spooled file."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from ingest.plan import Action, count_source_items, plan_entries
from ingest.sources.members import SourceEntry
from schemas import (
    FILE_LEVEL_INDEX,
    EmbeddingRecord,
    Kind,
    MediaItem,
    Rejected,
    SegmentPolicy,
    Settings,
    Stage,
    point_id,
)
from search.store import open_store

POLICY = SegmentPolicy()
MODEL = "m-test"


def _entry(tmp: Path, name: str, *, duplicate: bool = False, item_id: str | None = None) -> SourceEntry:
    path = tmp / f"{name}.spool"
    path.write_bytes(name.encode())
    item = MediaItem(item_id or f"id-{name}", str(tmp), name, 4, Kind.TEXT)
    return SourceEntry(item, path, duplicate=duplicate, temporary=True)


def _file_level(item_id: str) -> EmbeddingRecord:
    vector = np.zeros(1024, np.float32)
    vector[0] = 1.0
    payload = {"item_id": item_id, "segment_index": FILE_LEVEL_INDEX, "modality": "text",
               "source_uri": [f"/x/{item_id}"], "model_id": MODEL}
    return EmbeddingRecord(point_id(item_id, "text", FILE_LEVEL_INDEX, POLICY, MODEL), vector, payload)


class CountingSink:
    """The real store, counting how often planning asks it."""

    def __init__(self, store):
        self.store, self.calls = store, 0

    def completed_items(self, item_ids):
        self.calls += 1
        return self.store.completed_items(item_ids)

    def write(self, records):
        self.store.write(records)

    def add_locations(self, item_id, uris):
        self.store.add_locations(item_id, uris)


@pytest.fixture
def store(tmp_path):
    with open_store(Settings(home=tmp_path / "home", store="local")) as s:
        s.ensure_collection(MODEL, POLICY)
        s.write([_file_level("id-done")])
        yield s


def test_decisions_and_releases(tmp_path, store) -> None:
    entries = [_entry(tmp_path, "done"), _entry(tmp_path, "new"),
               _entry(tmp_path, "copy", duplicate=True, item_id="id-new"),
               Rejected("", "/x/evil", Stage.SOURCE, "path traversal")]
    planned = list(plan_entries(entries, store))
    assert [p.action for p in planned] == [Action.SKIP, Action.INGEST, Action.DUPLICATE,
                                           Action.REJECT]
    assert not entries[0].path.exists() and not entries[2].path.exists()  # not needed: released
    assert entries[1].path.exists()  # the consumer decodes it, then releases it
    assert planned[3].uri == "/x/evil"


def test_one_store_query_per_batch(tmp_path, store) -> None:
    sink = CountingSink(store)
    entries = [_entry(tmp_path, f"f{i}") for i in range(5)]
    assert len(list(plan_entries(entries, sink, batch_items=2))) == 5
    assert sink.calls == 3


def test_batch_closes_early_on_spooled_bytes(tmp_path, store) -> None:
    sink = CountingSink(store)
    entries = [_entry(tmp_path, f"f{i}") for i in range(4)]
    list(plan_entries(entries, sink, batch_items=100, batch_bytes=8))  # 4 bytes each
    assert sink.calls == 2


def test_stopping_early_releases_what_was_not_handed_out(tmp_path, store) -> None:
    entries = [_entry(tmp_path, f"f{i}") for i in range(4)]
    stream = plan_entries(iter(entries), store, batch_items=4)
    first = next(stream)
    stream.close()
    assert first.entry.path.exists()
    assert [e.path.exists() for e in entries[1:]] == [False, False, False]


def test_count_source_items(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.txt", "a/y.wav", "a/b/z.png"):
        (tmp_path / name).write_bytes(b"1")
    assert count_source_items(str(tmp_path)) == 3
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "x.txt", "x.txt")
    assert count_source_items(str(archive)) is None  # streamed: total unknown
