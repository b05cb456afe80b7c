"""Query building without a model: input checks, fusion, negatives (search/query.py)."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Modality, Settings
from search.query import (
    EMBED_DIM,
    KEYWORDS,
    QueryPart,
    array_segments,
    audio_windows,
    bytes_file_name,
    check_array,
    check_vector,
    collect_parts,
    fuse,
    input_segments,
    mean_unit,
    parts_vector,
    subtract_negative,
)


def basis(i: int) -> np.ndarray:
    v = np.zeros(EMBED_DIM, np.float32)
    v[i] = 1.0
    return v


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, max_query_bytes=1 << 20)


def test_fuse_is_the_renormalised_weighted_sum_of_normalised_inputs():
    a, b = 3 * basis(0), 20 * basis(1)  # raw norms differ (ImageBind scales audio by 20)
    fused = fuse([a, b], [1.0, 1.0])
    assert np.isclose(np.linalg.norm(fused), 1.0)
    assert np.isclose(fused[0], fused[1])  # normalised before the sum: equal say
    tilted = fuse([a, b], [3.0, 1.0])
    assert tilted[0] > tilted[1] > 0


def test_fuse_refuses_inputs_that_cancel_out():
    with pytest.raises(ValueError, match="zero vector"):
        fuse([basis(0), -basis(0)], [1.0, 1.0])


def test_mean_unit_of_segments_is_unit_and_between_them():
    v = mean_unit(np.stack([basis(0), basis(1)]))
    assert np.isclose(np.linalg.norm(v), 1.0) and np.isclose(v[0], v[1])


def test_subtract_negative_moves_the_query_away_from_the_negative():
    query = fuse([basis(0), basis(1)], [1.0, 1.0])
    moved = subtract_negative(query, basis(1), 0.5)
    assert np.isclose(np.linalg.norm(moved), 1.0)
    assert moved @ basis(1) < query @ basis(1)
    assert moved @ basis(0) > query @ basis(0)
    with pytest.raises(ValueError, match="negative_weight"):
        subtract_negative(query, basis(1), float("nan"))


def test_check_vector_validates_shape_finiteness_and_zero():
    v = check_vector(5 * basis(3))
    assert v.dtype == np.float32 and np.isclose(np.linalg.norm(v), 1.0)
    assert np.isclose(check_vector(list(basis(2)))[2], 1.0)  # a plain list of floats works
    with pytest.raises(ValueError, match="shape"):
        check_vector(np.ones(512))
    bad = basis(0).copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_vector(bad)
    with pytest.raises(ValueError, match="zero vector"):
        check_vector(np.zeros(EMBED_DIM))
    with pytest.raises(ValueError, match="1024 numbers"):
        check_vector({"a": 1})


def test_collect_parts_one_part_per_value_with_its_weight():
    parts = collect_parts({"text": ["a", "b"], "image": None, "vector": basis(0)},
                          {"text": 0.25})
    assert [(p.keyword, p.weight) for p in parts] == [("text", 0.25), ("text", 0.25),
                                                      ("vector", 1.0)]
    assert len(collect_parts({"vector": [basis(0), basis(1)]})) == 2
    assert len(collect_parts({"vector": [float(x) for x in basis(0)]})) == 1


@pytest.mark.parametrize(("inputs", "weights", "message"), [
    ({}, None, "empty query"),
    ({"text": None}, None, "empty query"),
    ({"sound": "x"}, None, "unknown query input"),
    ({"text": []}, None, "empty list"),
    ({"text": "a"}, {"image": 1.0}, "no image= input"),
    ({"text": "a"}, {"text": -1.0}, "finite number > 0"),
    ({"text": "a"}, {"text": float("nan")}, "finite number > 0"),
    ({"text": "a"}, {"text": "1"}, "finite number > 0"),
])
def test_collect_parts_refuses_bad_queries(inputs, weights, message):
    with pytest.raises(ValueError, match=message):
        collect_parts(inputs, weights)


def test_vector_only_query_needs_no_encoder(settings):
    parts = collect_parts({"vector": [basis(0), basis(1)]}, {"vector": 2.0})
    assert np.isclose(parts_vector(parts, None, settings)[0], np.sqrt(0.5))


@pytest.mark.parametrize(("keyword", "array", "message"), [
    ("image", np.zeros((4, 4, 3), np.float32), "uint8"),
    ("image", np.zeros((4, 4), np.uint8), "uint8"),
    ("video", np.zeros((3, 4, 4, 3), np.uint8), r"\[2,H,W,3\]"),
    ("audio", np.zeros((2, 100), np.float32), "mono"),
    ("audio", np.full(100, np.nan, np.float32), "NaN"),
    ("depth", np.zeros((4, 4, 1), np.float32), r"\[H,W\]"),
    ("imu", np.zeros((3, 2000), np.float32), r"\[6,T\]"),
    ("text", np.zeros(3), "does not take arrays"),
])
def test_array_inputs_must_have_the_decoded_layout(keyword, array, message):
    with pytest.raises(ValueError, match=message):
        check_array(KEYWORDS[keyword], array, 1 << 20)


def test_oversized_inputs_are_refused(settings, tmp_path):
    big = np.zeros((1024, 1024, 3), np.uint8)  # 3 MiB > the 1 MiB cap of the fixture
    with pytest.raises(ValueError, match="MEDIABIND_MAX_QUERY_BYTES"):
        input_segments(QueryPart("image", big), settings)
    with pytest.raises(ValueError, match="MEDIABIND_MAX_QUERY_BYTES"):
        input_segments(QueryPart("audio", b"\0" * (2 << 20)), settings)
    path = tmp_path / "big.wav"
    path.write_bytes(b"\0" * (2 << 20))
    with pytest.raises(ValueError, match="MEDIABIND_MAX_QUERY_BYTES"):
        input_segments(QueryPart("audio", path), settings)
    with pytest.raises(ValueError, match="cap"):
        input_segments(QueryPart("text", "x" * (2 << 20)), settings)


def test_wrong_input_types_and_missing_files_are_refused(settings, tmp_path):
    with pytest.raises(ValueError, match="takes a path"):
        input_segments(QueryPart("image", 42), settings)
    with pytest.raises(FileNotFoundError, match="no such file"):
        input_segments(QueryPart("audio", str(tmp_path / "missing.wav")), settings)
    with pytest.raises(ValueError, match="empty string"):
        input_segments(QueryPart("text", "   "), settings)


def test_text_and_arrays_become_segments_without_decoding(settings):
    (text,) = input_segments(QueryPart("text", "a dog barking"), settings)
    assert text.modality is Modality.TEXT and text.data == "a dog barking"
    image = np.zeros((8, 8, 3), np.uint8)
    (seg,) = input_segments(QueryPart("image", image), settings)
    assert seg.modality is Modality.VISION and seg.data is image


def test_long_audio_arrays_are_cut_into_ingestion_windows(settings):
    samples = np.arange(5 * 16_000, dtype=np.float32)  # 5 s at 16 kHz, 2-s windows
    windows = audio_windows(samples, settings)
    assert [w.size for w in windows] == [32_000, 32_000, 32_000]  # every window full length
    assert windows[1][0] == 32_000  # consecutive (stride = window) ...
    assert windows[2][-1] == samples[-1]  # ... and the last one moved back to end at the end
    segments = array_segments(KEYWORDS["audio"], samples, settings)
    assert [s.index for s in segments] == [0, 1, 2]
    assert len(audio_windows(np.ones(100, np.float32), settings)) == 1


def test_bytes_get_a_file_name_the_kind_detector_understands():
    assert bytes_file_name(KEYWORDS["text"], b"hello") == "query.txt"
    assert bytes_file_name(KEYWORDS["depth"], b"\x93NUMPY...") == "query.depth.npy"
    assert bytes_file_name(KEYWORDS["thermal"], b"\x89PNG\r\n") == "query.thermal.png"
    assert bytes_file_name(KEYWORDS["image"], b"\x89PNG\r\n") == "query"


def test_a_query_file_takes_ingestions_route_from_bytes_to_segments(media, tmp_path):
    """The same item id and segments as ingestion, its one probe, its rejection reasons."""
    import hashlib
    import zipfile

    from embed_workers.pipeline import decode_events
    from ingest import probe
    from ingest.sources import SourceEntry, iter_source

    settings = Settings(home=tmp_path / "home", ffmpeg_timeout_s=60)
    video = media.get("colour_mp4")
    copy = tmp_path / "query.mp4"  # a path no earlier probe of the session has kept
    copy.write_bytes(video.read_bytes())
    before = probe.launches.copy()
    segments = input_segments(QueryPart("video", copy), settings)
    assert (probe.launches - before)[str(copy)] == 1  # classified and decoded on one probe
    (entry,) = [o for o in iter_source(copy, settings) if isinstance(o, SourceEntry)]
    with entry:
        ingested = [s for s in decode_events(entry.item, entry.path, settings.policy, settings)
                    if getattr(s, "modality", None) is Modality.VISION]
    assert {s.item_id for s in segments} == {hashlib.sha256(copy.read_bytes()).hexdigest()}
    assert [(s.start_s, s.end_s) for s in segments] == [(s.start_s, s.end_s) for s in ingested]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(segments, ingested, strict=True))

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"video=: 'empty.mp4': empty file \(0 bytes\)"):
        input_segments(QueryPart("video", empty), settings)
    archive = tmp_path / "clips.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(video, "colour.mp4")
    with pytest.raises(ValueError, match="is an archive; one media file is wanted"):
        input_segments(QueryPart("video", archive), settings)
    with pytest.raises(ValueError, match="must be image; it is video"):
        input_segments(QueryPart("image", copy), settings)
    from ingest.sources import NotOneMediaFile, read_local_file

    with pytest.raises(NotOneMediaFile, match="is not a file"), \
            read_local_file(tmp_path, settings):  # a folder is no query file or target
        pass


def test_a_short_audio_array_is_padded_like_an_ingested_clip(settings):
    from ingest.decode.audio import MIN_SAMPLES

    (clip,) = audio_windows(np.ones(10, np.float32), settings)
    assert clip.size == MIN_SAMPLES and clip[:10].tolist() == [1.0] * 10 and not clip[10:].any()
