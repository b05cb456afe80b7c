"""The real flows on a generated archive: tiny model, embedded store, Prefect test server.

Each scenario gets its own MEDIABIND_HOME (so its own embedded store); the
flows read their settings from the environment, as a deployment would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flows import locks
from flows.ingest import ingest_archive, reembed
from flows.locks import source_key
from flows.prune import prune
from flows.sample import Clip, write_clip
from schemas import SegmentPolicy, Settings, collection_name
from search.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TINY = "imagebind_tiny"
FILES = {
    "audio/tone.wav": Clip(None, "sine=frequency=440:sample_rate=16000", 2.0, ""),
    "video/clip.mp4": Clip("testsrc2=size=64x48:rate=5", "sine=frequency=880:sample_rate=16000",
                           2.0, ""),
}


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def make_archive(root: Path, note: str) -> Path:
    """Four small files of four kinds; ``note`` makes the bytes differ between archives."""
    from PIL import Image

    for name, clip in FILES.items():
        write_clip(clip, root / name)
    pixels = np.random.default_rng(len(note)).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    (root / "images").mkdir()
    Image.fromarray(pixels).save(root / "images" / "noise.png")
    (root / "text").mkdir()
    (root / "text" / "note.txt").write_text(f"a short note about {note}\n")
    return root


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None) -> Path:
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDIABIND_PRESET", TINY)
    monkeypatch.setenv("MEDIABIND_STORE", "edge")
    monkeypatch.setenv("MEDIABIND_COLLECTION", "media")
    monkeypatch.delenv("MEDIABIND_CHECKPOINT", raising=False)
    return tmp_path / "home"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return make_archive(tmp_path / "archive", "tones")


def stored(**where: str) -> dict[str, int]:
    """item_id → number of points, read through the alias."""
    with open_store(Settings()) as store:
        return {row["item_id"]: row["n_points"] for row in store.list_items(**where)}


def item_at(path: Path) -> str:
    """The stored item whose locations include ``path``."""
    with open_store(Settings()) as store:
        ids = [r["item_id"] for r in store.list_items() if str(path) in r["source_uri"]]
    assert len(ids) == 1, ids
    return ids[0]


def artifacts_with_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_ingest_rerun_and_reembed(home, archive):
    """One store through its life: ingest, an idle rerun, a blue/green re-embed."""
    first = ingest_archive(str(archive))
    assert first["items_completed"] == len(list(archive.rglob("*.*"))) == 4
    assert first["items_rejected"] == 0 and first["points_written"] > 4
    items = stored(archive=str(archive))
    assert len(items) == 4 and sum(items.values()) == first["points_written"]
    assert Path(first["report"]).is_file()
    artifact, = artifacts_with_key(f"ingest-{source_key(str(archive))}")
    assert first["run_id"] in artifact.data and artifact.type == "markdown"

    again = ingest_archive(str(archive))  # lists the folder, reads none of it
    assert again["items_completed"] == 0 and again["points_written"] == 0
    assert again["items_unchanged"] == 4 and again["source_bytes_read"] == 0
    assert stored(archive=str(archive)) == items

    result = reembed(segment_s=1.0, stride_s=1.0)

    settings = Settings()
    new = collection_name(first["model_id"], SegmentPolicy(1.0, 1.0, settings.video_crops))
    assert result["old"] == first["collection"] and result["new"] == new
    with open_store(settings) as store:
        info = store.collection_info()
        assert info["physical"] == new and info["policy"] == "w1s1c3u"
        assert store.backend.collection_exists(first["collection"])  # kept for rollback
    reembedded = stored()
    assert set(reembedded) == set(items)
    assert sum(reembedded.values()) > sum(items.values())  # 1 s windows: more segments
    with pytest.raises(ValueError, match="already the current collection"):
        reembed(segment_s=1.0, stride_s=1.0)

    # Back to 2-s windows, this time dropping the 1-s collection once the alias moved.
    back = reembed(segment_s=2.0, stride_s=2.0, drop_old=True)
    assert (back["old"], back["new"]) == (new, first["collection"])
    with open_store(Settings()) as store:
        assert not store.backend.collection_exists(new)
        assert store.collection_info()["physical"] == first["collection"]
    assert stored() == items


def test_prune_removes_exactly_the_points_of_deleted_files(home, archive):
    tone, video = archive / "audio" / "tone.wav", archive / "video" / "clip.mp4"
    copy = archive / "audio" / "tone_copy.wav"  # the same bytes at a second path
    copy.write_bytes(tone.read_bytes())
    ingest_archive(str(archive))
    before = stored(archive=str(archive))
    tone_id, video_id = item_at(tone), item_at(video)
    assert item_at(copy) == tone_id
    tone.unlink()  # its bytes are still in the archive (the copy): keep the points
    video.unlink()  # gone for good: its points go

    result = prune(str(archive))

    assert result["gone"] == [video_id] and result["points_removed"] == before[video_id]
    assert result["items_relocated"] == 1
    assert stored(archive=str(archive)) == {k: v for k, v in before.items() if k != video_id}
    with open_store(Settings()) as store:
        row, = [r for r in store.list_items() if r["item_id"] == tone_id]
    assert row["source_uri"] == [str(copy)]
    assert prune(str(archive))["points_removed"] == 0  # nothing more to remove


def test_a_busy_source_is_refused_by_the_file_lock(home, archive, monkeypatch):
    monkeypatch.setattr(locks, "BUSY_WAIT_S", 0.2)
    with (locks.source_lock(Settings(), str(archive)),
          pytest.raises(locks.SourceBusyError, match="already ingesting")):
        ingest_archive(str(archive))


def test_a_busy_source_is_refused_by_the_global_limit(home, archive):
    from prefect.client.orchestration import get_client

    with locks.source_slot(str(archive)) as name:
        assert name == locks.slot_name(str(archive))
        with (pytest.raises(locks.SourceBusyError, match="concurrency limit"),
              locks.source_slot(str(archive), wait_s=1.0)):
            pass
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert limit.limit == 1 and limit.active_slots == 0  # released on exit


def test_missing_source_fails_without_retrying(home, tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        ingest_archive(str(tmp_path / "nowhere"))


def task_runs_of(state) -> dict[str, int]:
    """Task name → how many times Prefect ran it, in the flow run behind ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.run_count for r in runs}


def test_missing_weights_fail_at_the_check_and_create_nothing(home, archive, monkeypatch):
    """imagebind_huge has no checkpoint here and the licence is not accepted: the check
    task fails once, and no collection or alias is made (the next run picks the alias)."""
    monkeypatch.setenv("MEDIABIND_PRESET", "imagebind_huge")
    monkeypatch.delenv("MEDIABIND_ACCEPT_LICENSE", raising=False)
    state = ingest_archive(str(archive), return_state=True)
    assert state.is_failed() and "CC BY-NC-SA" in str(state.result(raise_on_failure=False))
    assert task_runs_of(state) == {"check": 1}
    assert not (home / "qdrant" / "catalog.json").exists()


def test_a_store_held_by_another_process_is_not_retried(home, archive):
    with open_store(Settings()):  # this process's handle: the flow's run cannot open it
        state = ingest_archive(str(archive), return_state=True)
    assert state.is_failed() and "holds the embedded store" in str(
        state.result(raise_on_failure=False))
    assert task_runs_of(state) == {"check": 1, "run": 1}


# --- prune and reembed keep what is still there -----------------------------------------


def paths_of(item_id: str) -> list[str]:
    with open_store(Settings()) as store:
        row, = [r for r in store.list_items() if r["item_id"] == item_id]
    return row["source_uri"]


def notes(root: Path, **texts: str) -> Path:
    """A folder of small text files (name → text): the fastest items to embed."""
    root.mkdir(parents=True)
    for name, text in texts.items():
        (root / name).write_text(text)
    return root


def test_prune_keeps_the_new_version_of_a_file_edited_in_place(home, tmp_path):
    folder = notes(tmp_path / "notes", **{"note.txt": "a bird by the sea\n",
                                           "other.txt": "a train in the hills\n"})
    note = folder / "note.txt"
    ingest_archive(str(folder))
    old_id, other_id = item_at(note), item_at(folder / "other.txt")
    note.write_text("the note, edited: a bird over a lake\n")  # same path, new bytes
    edited = ingest_archive(str(folder))  # reads only the edited file
    assert edited["items_completed"] == 1 and edited["items_unchanged"] == 1
    after = stored(archive=str(folder))
    new_id, = set(after) - {old_id, other_id}
    assert old_id not in after  # the old version held only that path: it went with it
    assert paths_of(new_id) == [str(note)]

    result = prune(str(folder))

    assert result["gone"] == [] and result["points_removed"] == 0
    assert stored(archive=str(folder)) == after


def test_prune_removes_files_that_left_and_keeps_changed_ones_unread(home, tmp_path):
    folder = notes(tmp_path / "notes", **{"a.txt": "a note about owls\n",
                                           "b.txt": "a note about foxes\n"})
    ingest_archive(str(folder))
    a_id, b_id = item_at(folder / "a.txt"), item_at(folder / "b.txt")
    before = stored(archive=str(folder))
    (folder / "a.txt").unlink()
    (folder / "b.txt").write_text("rewritten, not yet ingested\n")

    result = prune(str(folder))

    assert result["gone"] == [a_id] and result["points_removed"] == before[a_id]
    assert result["unverified"] == [b_id]  # its new bytes are read by the next ingest
    assert stored(archive=str(folder)) == {b_id: before[b_id]}


def test_prune_reads_no_content_so_a_lowered_limit_changes_nothing(home, tmp_path,
                                                                     monkeypatch):
    """Prune compares the listing with the ledger: a limit lowered since ingestion (which
    would refuse a file if it were read) cannot make a present file look deleted."""
    folder = notes(tmp_path / "notes", **{"big.txt": "a long note about the sea " * 20,
                                           "small.txt": "a bird\n"})
    ingest_archive(str(folder))
    before = stored(archive=str(folder))
    monkeypatch.setenv("MEDIABIND_MAX_MEMBER_BYTES", "100")

    result = prune(str(folder))

    assert result["gone"] == [] and result["unverified"] == []
    assert result["objects_listed"] == 2 and stored(archive=str(folder)) == before


def test_prune_after_a_move_and_a_new_file_at_the_old_path_keeps_both(home, tmp_path):
    folder = notes(tmp_path / "notes", **{"a.txt": "file P, about owls\n"})
    a, b = folder / "a.txt", folder / "b.txt"
    ingest_archive(str(folder))
    p_id = item_at(a)
    a.rename(b)
    a.write_text("file Q, about foxes\n")  # another file where P was
    ingest_archive(str(folder))  # P gains b.txt and loses a.txt, which Q holds now
    before = stored(archive=str(folder))
    q_id, = set(before) - {p_id}
    assert (paths_of(p_id), paths_of(q_id)) == ([str(b)], [str(a)])

    result = prune(str(folder))

    assert result["gone"] == [] and result["points_removed"] == 0
    assert stored(archive=str(folder)) == before


def test_prune_after_a_plain_move_relocates_the_item(home, tmp_path):
    folder = notes(tmp_path / "notes", **{"a.txt": "file P, about owls\n"})
    a, b = folder / "a.txt", folder / "b.txt"
    ingest_archive(str(folder))
    p_id = item_at(a)
    a.rename(b)
    ingest_archive(str(folder))  # b.txt: the same bytes, a second path
    assert paths_of(p_id) == [str(a), str(b)]

    result = prune(str(folder))

    assert result["gone"] == [] and result["items_relocated"] == 1
    assert paths_of(p_id) == [str(b)]


def test_a_single_file_source_is_pruned_and_reembedded_alone(home, tmp_path):
    downloads = notes(tmp_path / "Downloads", **{"wanted.txt": "the one file I ingest\n",
                                                  "private.txt": "never ingested\n"})
    wanted = downloads / "wanted.txt"
    ingest_archive(str(wanted))
    old_id = item_at(wanted)
    assert set(stored(archive=str(wanted))) == {old_id}  # the file is its own source
    wanted.write_text("the one file, edited\n")
    ingest_archive(str(wanted))  # the edited file replaces the old version
    new_id, = set(stored(archive=str(wanted)))
    assert new_id != old_id

    assert prune(str(wanted))["gone"] == []
    assert set(stored()) == {new_id} and paths_of(new_id) == [str(wanted)]

    result = reembed(segment_s=1.0, stride_s=1.0)

    assert result["sources"] == [str(wanted)]
    assert set(stored()) == {new_id} and paths_of(new_id) == [str(wanted)]


def test_reembed_swaps_only_to_a_complete_collection_unless_forced(home, tmp_path):
    from flows.ingest import IncompleteReembedError

    folder = notes(tmp_path / "notes", **{"kept.txt": "a kept note\n",
                                           "deleted.txt": "a note deleted, never pruned\n"})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,site\nkept.txt,harbour\n")
    first = ingest_archive(str(folder), manifest=str(manifest))
    kept_id = item_at(folder / "kept.txt")
    (folder / "deleted.txt").unlink()  # the re-embed cannot find it again

    with pytest.raises(IncompleteReembedError, match="lacks 1 of the 2 items"):
        reembed(segment_s=1.0, stride_s=1.0, drop_old=True)
    with open_store(Settings()) as store:  # neither swapped nor dropped
        assert store.collection_info()["physical"] == first["collection"]
    assert len(stored()) == 2

    forced = reembed(segment_s=1.0, stride_s=1.0, force=True)

    assert forced["old"] == first["collection"] and forced["new"] != forced["old"]
    assert set(stored()) == {kept_id}
    with open_store(Settings()) as store:  # the manifest of the first ingest was replayed
        point = store.scroll({"item_id": kept_id}, limit=1)[0]
    assert point.payload["meta"] == {"site": "harbour"}


def test_a_collection_of_the_earlier_layout_is_kept_until_reembed_moves_it(home, tmp_path,
                                                                           monkeypatch):
    """Upgrading does not fork the store: runs keep writing the collection searches read,
    in its two-point layout, until ``reembed()`` moves it to one point per item."""
    folder = notes(tmp_path / "notes", **{"first.txt": "the first note\n"})
    monkeypatch.setenv("MEDIABIND_ONE_POINT_ITEMS", "false")  # a store made before the layout
    old = ingest_archive(str(folder))
    assert old["collection"].endswith("c3") and stored() == {item_at(folder / "first.txt"): 2}
    monkeypatch.delenv("MEDIABIND_ONE_POINT_ITEMS")  # the upgraded default

    (folder / "second.txt").write_text("a second note, after the upgrade\n")
    kept = ingest_archive(str(folder))

    assert kept["collection"] == old["collection"] and kept["items_completed"] == 1
    assert any("earlier point layout" in note for note in kept["notes"])
    assert sorted(stored().values()) == [2, 2]  # searched, and in one layout

    moved = reembed()

    assert (moved["old"], moved["new"]) == (old["collection"], old["collection"] + "u")
    assert sorted(stored().values()) == [1, 1]
    third = ingest_archive(str(folder))  # now the one-point collection is the one written
    assert third["collection"] == moved["new"] and third["notes"] == []
