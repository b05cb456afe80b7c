"""MediaSearch over a real embedded store holding known vectors (no model needed).

The same tests run on both embedded engines (qdrant-edge and qdrant-client's
local mode): one interface, proved equal by the same tests.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from schemas import (
    FILE_LEVEL_INDEX,
    EmbeddingRecord,
    Kind,
    MediaItem,
    Modality,
    Segment,
    Settings,
    point_id,
)
from schemas.payload import build_payload
from search import MediaSearch, ModelMismatchError, SearchResults
from search.results import DATAFRAME_COLUMNS
from search.store import open_store

MODEL = "test-model"
DIM = 1024


def unit(*coords: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    for i, x in coords:
        v[i] = x
    return v / np.linalg.norm(v)


def e(i: int) -> np.ndarray:
    return unit((i, 1.0))


class Archive:
    """Writes items with chosen vectors per segment, plus their file-level points."""

    def __init__(self, store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        store.ensure_collection(MODEL, settings.policy)

    def add(self, name: str, kind: Kind, segments: dict[Modality, list[np.ndarray]],
            texts: list[str] | None = None) -> str:
        item = MediaItem(hashlib.sha256(name.encode()).hexdigest(), "/archive", name, 10, kind)
        records = []
        for modality, vectors in segments.items():
            for index, vector in enumerate(vectors):
                data = texts[index] if texts else np.zeros(1, np.float32)
                start = None if texts else 2.0 * index
                seg = Segment(item.item_id, modality, kind, index, start,
                              None if start is None else start + 2.0, data)
                records.append(self._record(item, seg, vector))
            mean = np.mean(vectors, axis=0)
            whole = Segment(item.item_id, modality, kind, FILE_LEVEL_INDEX, None, None,
                            np.zeros(1, np.float32))
            records.append(self._record(item, whole, mean / np.linalg.norm(mean)))
        self.store.write(records)
        return item.item_id

    def _record(self, item: MediaItem, seg: Segment, vector: np.ndarray) -> EmbeddingRecord:
        policy = self.settings.policy
        payload = build_payload(item, seg, model_id=MODEL, policy=policy, run_id="test")
        pid = point_id(item.item_id, seg.modality, seg.index, policy, MODEL)
        return EmbeddingRecord(pid, vector.astype(np.float32), payload)


@pytest.fixture(params=["edge", "local"])
def env(request, tmp_path):
    settings = Settings(home=tmp_path, store=request.param, preset="imagebind_tiny")
    with open_store(settings) as store:
        archive = Archive(store, settings)
        yield MediaSearch(settings, store=store), archive


@pytest.fixture
def filled(env):
    """Five files: a video whose moment 2 (4–6 s) is e0, audio files, an image, a text."""
    client, archive = env
    archive.add("clip.mp4", Kind.VIDEO, {
        Modality.VISION: [e(5), e(6), unit((0, 1.0), (5, 0.2)), e(7)],
        Modality.AUDIO: [e(8), e(9), e(10), unit((0, 1.0), (9, 0.6))],
    })
    archive.add("near.wav", Kind.AUDIO, {Modality.AUDIO: [unit((0, 1.0), (1, 1.0)), e(11)]})
    archive.add("far.wav", Kind.AUDIO, {Modality.AUDIO: [e(1), e(12)]})
    archive.add("photo.jpg", Kind.IMAGE, {Modality.VISION: [unit((0, 1.0), (2, 2.0))]})
    archive.add("notes.txt", Kind.TEXT, {Modality.TEXT: [unit((0, 1.0), (3, 3.0))]},
                texts=["a fire crackles in the hearth, " * 4])
    return client


def files(results: SearchResults) -> list[str]:
    return [h.source_uri.rsplit("/", 1)[-1] for h in results]


def test_grouped_results_give_one_hit_per_file_with_the_best_moment(filled):
    results = filled.search(vector=e(0), limit=10, moments=2)
    # far.wav is orthogonal to the query (score 0): last, but still a file of the collection
    assert files(results) == ["clip.mp4", "near.wav", "photo.jpg", "notes.txt", "far.wav"]
    assert [h.rank for h in results] == [1, 2, 3, 4, 5]
    scores = [h.score for h in results]
    assert scores == sorted(scores, reverse=True)
    clip = results[0]
    assert (clip.kind, clip.modality, clip.start_s, clip.end_s) == ("video", "vision", 4.0, 6.0)
    assert clip.moment_label == "00:04–00:06"
    assert [m.start_s for m in clip.moments] == [4.0, 6.0]  # second best: audio at 6–8 s
    assert [m.modality for m in clip.moments] == ["vision", "audio"]
    assert all(not m.is_file_level for m in clip.moments)
    assert clip.source_uris == ("/archive/clip.mp4",)


def test_flat_results_are_segments_and_leave_file_level_points_out(filled):
    flat = filled.search(vector=e(0), limit=50, group_by_file=False)
    assert len(flat) == 14  # 8 + 2 + 2 + 1 + 1 segments; the 7 file-level points left out
    assert all(h.segment_index >= 0 and h.start_s is not None or h.kind in ("image", "text")
               for h in flat)
    assert len([h for h in flat if h.score > 1e-6]) == 5  # segments with an e0 component
    assert files(flat)[:5] == ["clip.mp4", "clip.mp4", "near.wav", "photo.jpg", "notes.txt"]
    assert flat[0].start_s == 4.0 and not flat.grouped


def test_text_hits_carry_their_chunk_as_snippet(filled):
    (hit,) = filled.search(vector=e(3), kinds="text")
    assert hit.text.startswith("a fire crackles")
    assert hit.start_s is None and hit.moment_label == "whole file"
    assert len(hit.snippet) <= 60 and hit.snippet.endswith("…")


def test_pagination_gives_the_next_files_without_overlap(filled):
    everything = files(filled.search(vector=e(0), limit=10))
    first, second = (filled.search(vector=e(0), limit=2, offset=o) for o in (0, 2))
    assert files(first) + files(second) == everything[:4]
    assert [h.rank for h in second] == [3, 4]
    flat_pages = [filled.search(vector=e(0), limit=3, offset=o, group_by_file=False)
                  for o in (0, 3)]
    ids = [h.point_id for page in flat_pages for h in page]
    assert len(ids) == len(set(ids)) == 6


def test_filters_kinds_modalities_and_where(filled):
    assert files(filled.search(vector=e(0), kinds="audio")) == ["near.wav", "far.wav"]
    assert set(files(filled.search(vector=e(0), kinds=["audio", "video"]))) == {
        "clip.mp4", "near.wav", "far.wav"}
    audio_only = filled.search(vector=e(0), modalities="audio", group_by_file=False)
    assert {h.modality for h in audio_only} == {"audio"}
    late = filled.search(vector=e(0), where={"start_s": {"gte": 6}}, group_by_file=False)
    assert len(late) == 2 and all(h.start_s >= 6 for h in late)  # clip's last vision+audio
    assert (late[0].modality, late[0].start_s) == ("audio", 6.0) and late[0].score > 0.5
    combined = filled.search(vector=e(0), kinds="video", where={"modality": "audio"})
    assert combined[0].modality == "audio" and combined[0].start_s == 6.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"where": {"colour": "red"}}, "unknown filter field"),
    ({"kinds": "movie"}, "unknown kind"),
    ({"modalities": "image"}, "unknown modality"),
    ({"kinds": []}, "empty list"),
])
def test_bad_filters_are_refused(filled, kwargs, message):
    with pytest.raises(ValueError, match=message):
        filled.search(vector=e(0), **kwargs)


def test_negative_moves_results_away(env):
    client, archive = env
    archive.add("both.wav", Kind.AUDIO, {Modality.AUDIO: [unit((0, 1.0), (1, 1.0))]})
    archive.add("only0.wav", Kind.AUDIO, {Modality.AUDIO: [e(0)]})
    query = unit((0, 1.0), (1, 1.0))
    assert files(client.search(vector=query)) == ["both.wav", "only0.wav"]
    away = client.search(vector=query, negative={"vector": e(1)}, negative_weight=1.0)
    assert files(away) == ["only0.wav", "both.wav"]
    moved = client.query_vector({"vector": query}, negative={"vector": e(1)})
    assert np.isclose(np.linalg.norm(moved), 1.0) and moved @ e(1) < query @ e(1)


def test_several_vectors_are_fused_with_equal_weight(env):
    client, archive = env
    archive.add("a.wav", Kind.AUDIO, {Modality.AUDIO: [e(0)]})
    archive.add("b.wav", Kind.AUDIO, {Modality.AUDIO: [e(1)]})
    archive.add("ab.wav", Kind.AUDIO, {Modality.AUDIO: [unit((0, 1.0), (1, 1.0))]})
    results = client.search(vector=[e(0), e(1)])
    assert files(results)[0] == "ab.wav"
    assert np.isclose(results[1].score, results[2].score, atol=1e-5)


def test_results_render_as_table_pandas_and_json(filled):
    results = filled.search(vector=e(0), limit=3, moments=2)
    table = str(results)
    header = table.splitlines()[0].split()
    assert header == ["rank", "score", "file", "kind", "moment", "snippet"]
    assert "/archive/clip.mp4" in table and "00:04–00:06" in table
    frame = results.to_pandas()
    assert list(frame.columns) == list(DATAFRAME_COLUMNS)
    assert len(frame) == 3 and frame["rank"].tolist() == [1, 2, 3]
    assert frame.loc[0, "start_s"] == 4.0 and len(frame.loc[0, "moments"]) == 2
    body = json.loads(results.to_json())
    assert body["grouped"] is True and [h["rank"] for h in body["hits"]] == [1, 2, 3]
    assert body["hits"][0]["moments"][0]["start_s"] == 4.0


def test_empty_results_say_so(filled):
    results = filled.search(vector=e(0), kinds="thermal")
    assert len(results) == 0 and str(results) == "no results"
    assert list(results.to_pandas().columns) == list(DATAFRAME_COLUMNS)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({}, ValueError, "empty query"),
    ({"vector": np.full(DIM, np.nan)}, ValueError, "NaN"),
    ({"vector": np.ones(3)}, ValueError, "shape"),
    ({"vector": np.zeros(DIM)}, ValueError, "zero vector"),
    ({"vector": e(0), "limit": 0}, ValueError, "limit"),
    ({"vector": e(0), "offset": -1}, ValueError, "offset"),
    ({"vector": e(0), "moments": 0}, ValueError, "moments"),
    ({"vector": e(0), "limit": 2.5}, ValueError, "limit"),
    ({"vector": e(0), "negative": "rain"}, ValueError, "negative is a dict"),
    ({"vector": e(0), "negative": {"smell": "x"}}, ValueError, "unknown negative input"),
    ({"vector": e(0), "weights": {"text": 1.0}}, ValueError, "no text= input"),
    ({"vector": e(0), "negative_weight": 0.5}, ValueError, "without a negative"),
    ({"vector": e(0), "negative": {"vector": e(1)}, "negative_weight": -1}, ValueError,
     "negative_weight must be"),
    ({"vector": e(0), "colour": "red"}, TypeError, "colour"),
])
def test_bad_queries_are_refused_with_clear_errors(env, kwargs, error, message):
    client, _ = env
    with pytest.raises(error, match=message):
        client.search(**kwargs)


def test_model_mismatch_is_refused_before_any_weights_load(filled):
    # The collection holds "test-model" vectors; the settings' preset is imagebind_tiny.
    with pytest.raises(ModelMismatchError) as info:
        filled.search(text="a dog barking")
    message = str(info.value)
    assert "imagebind_tiny_s0" in message and "test-model" in message
    assert "--collection" in message
