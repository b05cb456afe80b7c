"""The ledger: a rerun of an unchanged source lists it and reads no content.

Real parts throughout: the embedded store (its ledger is a companion collection
in the same engine), the local executor with the tiny model, files on disk.
Bytes read are counted twice: by the run itself (``source_bytes_read``) and by
the process's own I/O counter (``rchar`` in /proc/self/io).
"""

from __future__ import annotations

import os
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import FailingSink, make_media, open_ready_store, settings_for
from store_helpers import BACKEND_PARAMS, model_for
from store_helpers import settings_for as store_settings

from embed_workers.pipeline import run_ingest
from flows.run import start_run
from ingest import kinds
from schemas import Kind
from schemas.ledger import EntryKind, LedgerEntry, Listed
from search.ledger import ledger_name
from search.store import open_store

pytestmark = pytest.mark.timeout(600)


def rchar() -> int:
    """Bytes this process has read through read() calls so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def run(source: Path, settings, **kwargs):
    return start_run(str(source), settings, executor="local", **kwargs).report


def ledger_entries(settings, source: Path) -> list[LedgerEntry]:
    with open_store(settings) as store:
        return list(store.ledger().entries(str(source)))


# --- the entry's rules -------------------------------------------------------------------


def entry(kind: EntryKind = EntryKind.ITEM, **kw) -> LedgerEntry:
    base = {"uri": "/s/a.jpg", "source": "/s", "size": 10, "version": "1.0", "kind": kind}
    return LedgerEntry(**(base | kw))


def test_an_entry_matches_only_the_same_size_and_version():
    e = entry()
    assert e.same_object(Listed("/s/a.jpg", 10, "1.0"))
    assert not e.same_object(Listed("/s/a.jpg", 11, "1.0"))
    assert not e.same_object(Listed("/s/a.jpg", 10, "2.0"))
    assert not e.same_object(Listed("/s/a.jpg", 10, None))  # unknown version: read it


def test_transient_refusals_and_unknown_kinds_under_a_new_registry_are_not_final():
    assert entry().is_final("r1") and entry(EntryKind.CONTAINER).is_final("r1")
    assert entry(EntryKind.REJECTED, stage="decode").is_final("r1")
    assert not entry(EntryKind.REJECTED, stage="decode", transient=True).is_final("r1")
    unknown = entry(EntryKind.REJECTED, stage="probe", registry="r1")
    assert unknown.is_final("r1") and not unknown.is_final("r2")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_the_ledger_lives_beside_its_collection(tmp_path, backend):
    settings = store_settings(backend, tmp_path / "home")
    with open_store(settings) as store:
        physical = store.ensure_collection(model_for(backend), settings.policy)
        ledger = store.ledger()
        assert ledger.lookup(["/s/a.jpg"]) == {} and ledger.count() == 0
        ledger.record([entry(item_id="x"), entry(uri="/s/b.jpg"), entry(item_id="y")])
        assert ledger.count() == 2  # one entry per location: the latest wins
        assert ledger.lookup(["/s/a.jpg", "/s/zz"])["/s/a.jpg"].item_id == "y"
        assert {e.uri for e in ledger.entries("/s")} == {"/s/a.jpg", "/s/b.jpg"}
        assert list(ledger.entries("/elsewhere")) == []
        ledger.forget(["/s/b.jpg"])
        assert set(ledger.lookup(["/s/a.jpg", "/s/b.jpg"])) == {"/s/a.jpg"}
        store.swap_alias(store.ensure_collection(model_for(backend, "m2"), settings.policy))
        store.ensure_collection(model_for(backend, "m2"), settings.policy)
        store.drop_collection(physical)
        assert not store.backend.collection_exists(ledger_name(physical))


# --- reruns ------------------------------------------------------------------------------


def mixed_folder(root: Path, texts: int, blobs: int, blob_bytes: int) -> Path:
    """Short notes (embedded) and blobs of an unknown kind (read, then refused for good)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(texts):
        (root / f"note{i:04d}.txt").write_text(f"note {i}: a bird over the sea\n")
    for i in range(blobs):
        (root / f"blob{i:04d}.bin").write_bytes(rng.bytes(blob_bytes))
    return root


@pytest.mark.slow
def test_a_rerun_of_an_unchanged_thousand_file_source_reads_no_content(tmp_path):
    folder = mixed_folder(tmp_path / "src", texts=100, blobs=900, blob_bytes=32 << 10)
    total = sum(p.stat().st_size for p in folder.iterdir())
    settings = settings_for(tmp_path / "home")
    started = time.perf_counter()
    first = run(folder, settings)
    first_s = time.perf_counter() - started
    assert first.items_completed == 100 and len(first.rejected_items()) == 900
    assert first.source_bytes_read == total

    before, started = rchar(), time.perf_counter()
    again = run(folder, settings)
    rerun_s, read = time.perf_counter() - started, rchar() - before
    print(f"\n1,000 files ({total >> 20} MiB): first run {first_s:.1f} s, rerun {rerun_s:.2f} s "
          f"({rerun_s / first_s:.3f}x); rerun read {read} bytes through read() in all")
    assert again.items_unchanged == 1000 and again.source_bytes_read == 0
    assert again.items_completed == again.points_written == 0 and again.rejected == []
    assert read < total // 20  # the store's own files and the report, never the media


def test_a_changed_file_is_read_again_and_nothing_else(tmp_path):
    folder = mixed_folder(tmp_path / "src", texts=3, blobs=1, blob_bytes=1000)
    settings = settings_for(tmp_path / "home")
    run(folder, settings)
    changed = folder / "note0001.txt"
    changed.write_text("note 1, rewritten: a train in the hills\n")
    again = run(folder, settings)
    assert again.source_bytes_read == changed.stat().st_size
    assert again.items_completed == 1 and again.items_unchanged == 3


def test_an_unchanged_archive_is_one_lookup_and_a_touched_one_is_read(tmp_path):
    media = make_media(tmp_path / "media")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(p for p in media.rglob("*") if p.is_file()):
            tar.add(path, path.relative_to(media).as_posix())
    settings = settings_for(tmp_path / "home")
    first = run(archive, settings)
    assert first.items_completed == 6
    [container] = [e for e in ledger_entries(settings, archive) if e.kind is EntryKind.CONTAINER]
    assert container.uri == str(archive) and container.points == 8  # members read

    again = run(archive, settings)
    assert again.items_unchanged == 1 and again.source_bytes_read == 0

    # Same bytes, new version: indexed again (headers only), and every member, unchanged
    # by its own size and time, is settled by its entry: nothing read, nothing embedded.
    os.utime(archive)
    touched = run(archive, settings)
    assert touched.source_bytes_read == 0 and touched.items_completed == 0
    assert touched.items_unchanged == 8 and touched.points_written == 0
    assert run(archive, settings).items_unchanged == 1  # settled as one object again


def test_an_archive_read_in_parts_resumes_per_member_and_settles_once_every_part_did(
        tmp_path):
    archive = tmp_path / "notes.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(12):
            path = tmp_path / f"note{i:02d}.txt"
            path.write_text(f"note {i}: the ferry leaves at {i} o'clock\n")
            tar.add(path, path.name)
    member_bytes = sum((tmp_path / f"note{i:02d}.txt").stat().st_size for i in range(12))
    settings = settings_for(tmp_path / "home", shard_files=4, upsert_batch=4)
    with open_ready_store(settings) as store:
        with pytest.raises(ConnectionError, match="injected"):
            run_ingest(str(archive), FailingSink(store, allowed=2), settings=settings,
                       executor="local", ledger=store.ledger())
        assert not [e for e in store.ledger().entries(str(archive))
                    if e.kind is EntryKind.CONTAINER]  # not every part got to its end
    resumed = run(archive, settings)
    assert resumed.shards < 3 and 0 < resumed.source_bytes_read < member_bytes
    assert resumed.items_completed + resumed.items_unchanged == 12
    with open_store(settings) as store:
        audit = store.ledger().audit()
        [container] = [e for e in store.ledger().entries(str(archive))
                       if e.kind is EntryKind.CONTAINER]
    assert audit.agrees and audit.items == 12, audit.describe()
    again = run(archive, settings)
    assert again.items_unchanged == 1 and again.source_bytes_read == 0 and container.points


def test_each_archive_in_a_folder_is_settled_on_its_own(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "loose.txt").write_text("a loose note about rain\n")
    with zipfile.ZipFile(folder / "b.zip", "w") as zf:
        zf.writestr("x.txt", "a zipped note about snow\n")
    with zipfile.ZipFile(folder / "c.zip", "w") as zf:
        zf.writestr("y.txt", "another zipped note about wind\n")
    settings = settings_for(tmp_path / "home")
    assert run(folder, settings).items_completed == 3
    assert run(folder, settings).items_unchanged == 3

    with zipfile.ZipFile(folder / "c.zip", "a") as zf:
        zf.writestr("z.txt", "a note added to c later\n")
    again = run(folder, settings)
    assert again.items_unchanged == 2 and again.items_completed == 1  # z.txt
    assert again.items_skipped == 1  # y.txt: read with its changed archive, already stored


def test_files_of_an_unknown_kind_are_read_again_once_the_registry_knows_it(
        tmp_path, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    np.save(folder / "scan.radar.npy", np.linspace(0.5, 4.0, 32 * 32).reshape(32, 32))
    settings = settings_for(tmp_path / "home")
    first = run(folder, settings)
    assert [o.stage for o in first.rejected_items()] == ["probe"]
    assert run(folder, settings).items_unchanged == 1  # the same verdict: not read

    monkeypatch.setitem(kinds.NAMING, ".radar.npy", (Kind.DEPTH, "application/x-npy"))
    kinds._builtin_fingerprint.cache_clear()
    try:
        known = run(folder, settings)
    finally:
        monkeypatch.undo()
        kinds._builtin_fingerprint.cache_clear()
    assert known.items_completed == 1 and known.items_ingested["depth"] == 1


def test_the_ledger_never_claims_more_than_the_store_holds(tmp_path):
    """A run cut off by the store after its first write, then a rerun: every item entry's
    item has exactly its recorded number of points, counted in the store itself."""
    folder = make_media(tmp_path / "media")
    settings = settings_for(tmp_path / "home", upsert_batch=4)
    with open_ready_store(settings) as store:
        with pytest.raises(ConnectionError, match="injected"):
            run_ingest(str(folder), FailingSink(store, allowed=1), settings=settings,
                       executor="local", ledger=store.ledger())
        cut = store.ledger().audit()
        assert not cut.short and not cut.duplicates, cut  # behind the store, never ahead
        entries = store.ledger().count()
    run(folder, settings)
    with open_store(settings) as store:
        audit = store.ledger().audit()
        assert audit.agrees, audit.describe()
        assert store.ledger().count() > entries and audit.items == 6
        assert audit.points == store.count()


def test_the_audit_sees_a_missing_point_a_duplicate_and_an_unrecorded_item(tmp_path):
    folder = mixed_folder(tmp_path / "src", texts=3, blobs=0, blob_bytes=0)
    settings = settings_for(tmp_path / "home")
    run(folder, settings)
    with open_store(settings) as store:
        assert store.ledger().audit().agrees
        points = store.scroll(None, limit=100)
        first, second = sorted({p.payload["item_id"] for p in points})[:2]
        victim = next(p for p in points if p.payload["item_id"] == first)
        name = store.ledger().physical
        copy = next(p for p in points if p.payload["item_id"] == second)
        store.backend.upsert(name, [str(uuid.uuid4())], np.ones((1, 1024), np.float32) / 32,
                             [copy.payload])  # the same segment again, under another id
        store.delete_where({"item_id": first, "segment_index": victim.payload["segment_index"]})
        ledger = store.ledger()
        ledger.forget([u for e in ledger.entries(str(folder)) if e.item_id == second
                       for u in [e.uri]])
        audit = ledger.audit()
    assert not audit.agrees and audit.duplicates == 1
    assert audit.short[first][1] == audit.short[first][0] - 1
    assert audit.unrecorded == [second]
    assert "1 duplicate points" in audit.describe()


def test_a_store_written_before_the_ledger_is_backfilled_once(tmp_path):
    folder = mixed_folder(tmp_path / "src", texts=3, blobs=0, blob_bytes=0)
    settings = settings_for(tmp_path / "home")
    with open_ready_store(settings) as store:
        run_ingest(str(folder), store, settings=settings, executor="local")  # no ledger
    backfill = run(folder, settings)
    assert backfill.items_skipped == 3 and backfill.points_written == 0
    assert any("before mediabind kept a ledger" in n for n in backfill.notes)
    again = run(folder, settings)
    assert again.items_unchanged == 3 and again.source_bytes_read == 0 and not again.notes
