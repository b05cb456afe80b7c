"""End to end with the local executor: generated archive → tiny model → embedded store."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pipeline_helpers import (
    CORRUPT,
    DUPLICATE,
    GOOD_FILES,
    FailingSink,
    all_points,
    completing,
    expected_segments,
    make_archive,
    make_media,
    open_ready_store,
    settings_for,
    sha256,
    vectors,
    whole_items_are_the_single_segment_ones,
)

from embed_workers.pipeline import run_ingest
from embed_workers.report import Progress, RunReport
from ingest.decode.audio import audio_decoder
from ingest.decode.video import frame_backend
from schemas import FILE_LEVEL_INDEX, Kind

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archive")
    return make_archive(tmp), tmp / "media"


def _modality_counts(points: dict) -> Counter[str]:
    return Counter(p["modality"] for p in points.values())


def test_ingest_rerun_and_report(archive, tmp_path) -> None:
    path, folder = archive
    settings = settings_for(tmp_path / "home", encode_threads=3)  # batches encoded concurrently
    expected = expected_segments(folder, settings)
    seen: list[Progress] = []
    with open_ready_store(settings) as store:
        report = run_ingest(str(path), store, settings=settings, executor="local",
                            progress=seen.append)
        points = all_points(store)
        # Every good file's segments, plus one file-level point per item and modality.
        segments = Counter(p["modality"] for p in points.values()
                           if p["segment_index"] != FILE_LEVEL_INDEX)
        assert segments == expected == report.segments_written
        file_level = [p for p in points.values() if p["segment_index"] == FILE_LEVEL_INDEX]
        assert {p["item_id"] for p in completing(points.values())} == {
            sha256(folder / m) for m in GOOD_FILES}
        # an image is one point (segment and file); a video, its segments and their means
        assert whole_items_are_the_single_segment_ones(points.values())
        assert _modality_counts(points) == expected + Counter(p["modality"] for p in file_level)
        assert store.count() == len(points) == report.points_written
        # The corrupt file is reported, and none of it is stored.
        assert [r.uri.endswith(CORRUPT) for r in report.rejected] == [True]
        assert sha256(folder / CORRUPT) not in {p["item_id"] for p in points.values()}
        # The duplicate is one item that knows both paths.
        red = [p for p in completing(points.values())
               if p["item_id"] == sha256(folder / DUPLICATE)]
        assert sorted(u.split("!/")[1] for u in red[0]["source_uri"]) == [DUPLICATE,
                                                                           "images/red.png"]
        assert report.items_duplicate == 1 and report.items_completed == len(GOOD_FILES)
        assert seen and seen[-1].items_done == report.items_seen
        # The report names the frame backend of every video, and only of videos.
        backend = frame_backend(settings.video_decoder, "h264").name
        videos = [o for o in report.outcomes if o.outcome.value == "ingested"
                  and o.kind == Kind.VIDEO.value]
        assert videos and {o.decoder for o in videos} == {backend}
        assert all(o.decoder == "" for o in report.outcomes if o not in videos)
        assert report.video_decoders == {backend: len(videos)}
        # ... and what decoded the sound of every item that has some.
        sound = [o for o in report.outcomes if "audio" in o.modalities.split(",")]
        assert sound and {o.audio_decoder for o in sound} == {audio_decoder(settings)}
        assert all(o.audio_decoder == "" for o in report.outcomes if o not in sound)

        again = run_ingest(str(path), store, settings=settings, executor="local")
        assert store.count() == len(points)
        assert again.points_written == 0 and again.items_skipped == len(GOOD_FILES)
    saved = json.loads((settings.runs_path / again.run_id / "report.json").read_text())
    assert saved["items_skipped"] == len(GOOD_FILES)
    first = RunReport.read(settings.runs_path / report.run_id)
    assert [o.decoder for o in first.outcomes] == [o.decoder for o in report.outcomes]
    assert first.video_decoders == report.video_decoders
    assert f"video decoded by: {backend} {len(videos)}; audio by: " \
        f"{audio_decoder(settings)} {len(sound)}" in first.summary()
    assert [o.audio_decoder for o in first.outcomes] == [o.audio_decoder for o in report.outcomes]


def test_each_timed_file_is_probed_once_for_its_kind_duration_and_decode(archive, tmp_path):
    """An MP4 or MKV needs ffprobe to tell its kind, its duration and its streams to
    decode; a WAV the last two: one launch each, shared by the three stages."""
    from ingest import probe

    path, _ = archive
    settings = settings_for(tmp_path / "home")
    before = probe.launches.copy()
    with open_ready_store(settings) as store:
        report = run_ingest(str(path), store, settings=settings, executor="local")
    launched = probe.launches - before
    timed = [m for m, kind in GOOD_FILES.items() if kind in (Kind.VIDEO, Kind.AUDIO)]
    assert report.items_completed == len(GOOD_FILES)
    # the good timed files and the corrupt .mp4 (refused by ffprobe), once each
    assert len(launched) == len(timed) + 1 and set(launched.values()) == {1}, launched


def test_file_level_point_is_the_renormalised_mean(archive, tmp_path) -> None:
    path, folder = archive
    settings = settings_for(tmp_path / "home")
    with open_ready_store(settings) as store:
        run_ingest(str(path), store, settings=settings, executor="local")
        points = all_points(store)
        video = sha256(folder / "clips/tone.mp4")
        for modality in ("vision", "audio"):
            ids = {pid: p["segment_index"] for pid, p in points.items()
                   if p["item_id"] == video and p["modality"] == modality}
            vecs = vectors(store, list(ids))
            mean = np.mean([v for pid, v in vecs.items() if ids[pid] != FILE_LEVEL_INDEX], axis=0)
            whole = next(v for pid, v in vecs.items() if ids[pid] == FILE_LEVEL_INDEX)
            np.testing.assert_allclose(whole, mean / np.linalg.norm(mean), atol=1e-5)


def test_a_run_cut_off_midway_resumes_without_duplicates(archive, tmp_path) -> None:
    path, folder = archive
    settings = settings_for(tmp_path / "home", upsert_batch=4)
    expected = expected_segments(folder, settings)
    with open_ready_store(settings) as store:
        with pytest.raises(ConnectionError):
            run_ingest(str(path), FailingSink(store, allowed=2), settings=settings,
                       executor="local", run_id="cut")
        partial = store.count()
        assert partial > 0
        resumed = run_ingest(str(path), store, settings=settings, executor="local")
        points = all_points(store)
        segments = Counter(p["modality"] for p in points.values()
                           if p["segment_index"] != FILE_LEVEL_INDEX)
        assert segments == expected  # all there, each point once (ids are deterministic)
        assert resumed.items_skipped + resumed.items_completed == len(GOOD_FILES)
    failed = json.loads((settings.runs_path / "cut" / "report.json").read_text())
    assert "injected" in failed["error"]


def test_missing_source_is_a_user_error(tmp_path) -> None:
    settings = settings_for(tmp_path / "home")
    with open_ready_store(settings) as store, pytest.raises(FileNotFoundError):
        run_ingest(str(tmp_path / "nope"), store, settings=settings, executor="local")


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from pipeline_helpers import open_ready_store, settings_for
from embed_workers.pipeline import run_ingest
from pathlib import Path

class DiesAfter:
    '''The real store; the process is SIGKILLed right after its second write.'''
    def __init__(self, store):
        self.store, self.writes = store, 0
    def write(self, records):
        self.store.write(records)
        self.writes += 1
        if self.writes == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    def completed_items(self, ids):
        return self.store.completed_items(ids)
    def add_locations(self, item_id, uris):
        self.store.add_locations(item_id, uris)

settings = settings_for(Path(sys.argv[2]), upsert_batch=4)
store = open_ready_store(settings)
run_ingest(sys.argv[1], DiesAfter(store), settings=settings, executor="local")
"""


def test_a_process_killed_midway_resumes(archive, tmp_path) -> None:
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path, folder = archive
    home = tmp_path / "home"
    tests = str(Path(__file__).parent)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(path), str(home), tests],
                            capture_output=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    settings = settings_for(home, upsert_batch=4)
    with open_ready_store(settings) as store:
        assert store.count() > 0
        run_ingest(str(path), store, settings=settings, executor="local")
        points = all_points(store)
        segments = Counter(p["modality"] for p in points.values()
                           if p["segment_index"] != FILE_LEVEL_INDEX)
        assert segments == expected_segments(folder, settings)
        complete = {p["item_id"] for p in completing(points.values())}
        assert complete == {sha256(folder / m) for m in GOOD_FILES}


def test_a_file_moved_between_runs_keeps_its_points_and_gains_its_new_path(tmp_path) -> None:
    folder = make_media(tmp_path / "media")
    settings = settings_for(tmp_path / "home")
    moved = folder / "moved" / "beep.wav"
    with open_ready_store(settings) as store:
        run_ingest(str(folder), store, settings=settings, executor="local")
        before = store.count()
        moved.parent.mkdir()
        (folder / "sounds" / "beep.wav").rename(moved)
        again = run_ingest(str(folder), store, settings=settings, executor="local")
        assert again.points_written == 0 and store.count() == before
        item = [p for p in all_points(store).values() if p["item_id"] == sha256(moved)]
        assert item and all(str(moved) in p["source_uri"] for p in item)


# --- a failed batch, and a device that keeps failing ---------------------------------------


def _text_segments(n: int):
    from schemas import Kind, Segment

    return [Segment(f"item{i}", "text", Kind.TEXT, 0, None, None, f"note {i} about herons")
            for i in range(n)]


def _tiny_encoder(tmp_path):
    from embed_workers.encoder import Encoder

    return Encoder(settings=settings_for(tmp_path / "home"))


def test_a_failed_batch_is_logged_with_its_cause_and_only_the_bad_input_is_rejected(
        tmp_path, caplog) -> None:
    from embed_workers.pipeline import encode_safely
    from schemas import Kind, Segment

    segments = _text_segments(3)
    bad = Segment("broken", "text", Kind.TEXT, 0, None, None, np.zeros(3))  # not a text
    with caplog.at_level("WARNING", logger="embed_workers.pipeline"):
        kept, vectors, rejected = encode_safely(_tiny_encoder(tmp_path), [*segments, bad])
    assert [s.item_id for s in kept] == ["item0", "item1", "item2"] and vectors.shape[0] == 3
    assert [r.item_id for r in rejected] == ["broken"]
    [record] = caplog.records
    assert "a batch of 4 text inputs failed" in record.getMessage()


@pytest.mark.parametrize("fault", [
    "CUDA error: an illegal memory access was encountered",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_a_device_fault_that_persists_stops_the_run_with_a_clear_error(
        archive, tmp_path, fault) -> None:
    """The GPU cannot fail here, so its error is raised where the model would raise it:
    every batch fails, and so does every single input."""
    import torch

    from embed_workers.pipeline import EncoderFault

    path, _ = archive
    encoder = _tiny_encoder(tmp_path)
    error = torch.cuda.OutOfMemoryError if "memory" in fault else RuntimeError

    def broken_device(inputs):
        raise error(fault)

    encoder.encode_prepared = broken_device
    settings = settings_for(tmp_path / "home")
    with open_ready_store(settings) as store, pytest.raises(EncoderFault, match="device failed"):
        run_ingest(str(path), store, settings=settings, executor="local", encoder=encoder,
                   run_id="broken-gpu")
    report = json.loads((settings.runs_path / "broken-gpu" / "report.json").read_text())
    assert report["error"].startswith("EncoderFault: the encoder's device failed")
    assert fault[:20] in report["error"]


def test_out_of_memory_for_a_batch_alone_is_retried_one_input_at_a_time(tmp_path) -> None:
    import torch

    from embed_workers.pipeline import encode_prepared
    from embed_workers.prepare import Preparer

    encoder = _tiny_encoder(tmp_path)
    real = encoder.encode_prepared

    def small_memory(inputs):
        if len(inputs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return real(inputs)

    encoder.encode_prepared = small_memory
    preparer = Preparer(encoder.options)
    prepared = [preparer(s) for s in _text_segments(4)]
    kept, vectors, rejected = encode_prepared(encoder, prepared)
    assert len(kept) == 4 and vectors.shape == (4, 1024) and rejected == []


# --- batches sized in model views, by the encoder's budget for its device -----------------


def test_batches_fill_by_views_so_a_three_crop_clip_weighs_three() -> None:
    from embed_workers.pipeline import KeyedBatcher

    batcher: KeyedBatcher[str, str] = KeyedBatcher(lambda m: 6, max_wait_s=60)
    assert batcher.add("vision", "clip0", 3) == []
    assert batcher.add("vision", "photo", 1) == []
    assert batcher.add("vision", "clip1", 3) == [("vision", ["clip0", "photo", "clip1"])]
    assert batcher.add("vision", "clip2", 3) == [] and len(batcher) == 1


def test_the_view_budget_grows_on_cuda_for_every_modality() -> None:
    from embed_workers.encoder import CUDA_BATCH_FACTOR, view_budgets
    from schemas import Modality, spec

    cpu, cuda = view_budgets("cpu"), view_budgets("cuda")
    for modality in Modality:
        assert cpu[modality] == spec(modality).batch_size
        assert cuda[modality] == CUDA_BATCH_FACTOR * cpu[modality]


def test_the_local_executor_hands_the_encoder_batches_of_its_own_budget(tmp_path) -> None:
    from embed_workers.encoder import Encoder

    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(7):
        (folder / f"n{i}.txt").write_text(f"note {i}: a wren in the hedge\n")
    settings = settings_for(tmp_path / "home", decode_workers=1)
    encoder = Encoder(settings=settings, batch_sizes={"text": 3})
    sizes: list[int] = []
    real = encoder.encode_prepared

    def counted(inputs):
        sizes.append(len(inputs))
        return real(inputs)

    encoder.encode_prepared = counted
    with open_ready_store(settings) as store:
        report = run_ingest(str(folder), store, settings=settings, executor="local",
                            encoder=encoder)
    assert report.items_completed == 7 and sum(sizes) == 7
    assert max(sizes) == 3  # the registry's CPU size for text is larger: the encoder's rules
