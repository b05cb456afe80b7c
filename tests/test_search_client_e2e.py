"""End to end: a generated archive ingested with the tiny preset, searched by file, bytes, array.

See tests/search_helpers.py for the archive and why exact-window queries are the proof.
"""

from __future__ import annotations

import numpy as np
import pytest
from search_helpers import (
    TARGET,
    TEXT,
    WINDOW_START_S,
    ffmpeg,
    ingested_archive,
    read_wav,
)

from search import MediaSearch, ModelMismatchError

pytestmark = pytest.mark.slow  # ffmpeg + the tiny model: tens of seconds for the module


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return ingested_archive(tmp_path_factory.getbasetemp() / "search-archive")


@pytest.fixture
def client(archive):
    with MediaSearch(archive.settings) as ms:
        yield ms


def name(hit) -> str:
    return hit.source_uri.rsplit("/", 1)[-1]


def test_an_audio_window_finds_its_video_at_the_right_time(client, archive):
    results = client.search(audio=archive.query("window.wav"), limit=5)
    top = results[0]
    assert top.source_uri.endswith(TARGET) and top.kind == "video"
    assert (top.modality, top.start_s, top.end_s) == ("audio", WINDOW_START_S,
                                                      WINDOW_START_S + 2)
    assert top.score > results[1].score
    flat = client.search(audio=archive.query("window.wav"), group_by_file=False, limit=3)
    assert flat[0].point_id == top.point_id
    assert flat[0].score > 0.999  # the same samples through the same decode: the same vector


def test_bytes_and_arrays_give_the_vector_of_the_file(client, archive):
    path = archive.query("window.wav")
    from_path = client.query_vector({"audio": path})
    from_bytes = client.query_vector({"audio": path.read_bytes()})
    from_array = client.query_vector({"audio": read_wav(path)})
    assert np.allclose(from_path, from_bytes, atol=1e-6)
    assert np.allclose(from_path, from_array, atol=1e-4)


def test_a_long_query_is_the_mean_of_its_windows(client, archive):
    # The whole 6-s soundtrack: 3 windows, renormalised mean = the video's file-level point.
    results = client.search(audio=archive.query("soundtrack.wav"), limit=3, moments=3)
    top = results[0]
    assert top.source_uri.endswith(TARGET) and top.score > 0.999
    assert len(top.moments) == 3 and all(m.modality == "audio" for m in top.moments)


def test_image_and_text_queries_find_their_files(client, archive):
    image = client.search(image=archive.media / "images/red.png", limit=2)
    assert name(image[0]) == "red.png" and image[0].kind == "image"
    text = client.search(text=TEXT, limit=2)
    assert name(text[0]) == "dawn.txt" and text[0].snippet == TEXT


def test_text_files_and_long_texts_are_chunked_like_ingested_text(client, archive):
    from_file = client.search(text=archive.media / "notes/dawn.txt", limit=1)
    assert name(from_file[0]) == "dawn.txt" and from_file[0].score > 0.999
    head = " ".join([TEXT] * 20)  # ~160 tokens: more than one 77-token sequence
    ends_in_fire = client.query_vector({"text": f"{head} A fire crackles in the hearth."})
    ends_in_rain = client.query_vector({"text": f"{head} Rain falls on the tin roof."})
    assert np.isclose(np.linalg.norm(ends_in_fire), 1.0)
    # A truncating tokenizer would never see the last sentence; chunking does.
    assert not np.allclose(ends_in_fire, ends_in_rain, atol=1e-6)


def test_weights_decide_between_two_inputs(client, archive):
    inputs = {"audio": archive.query("window.wav"), "text": TEXT}
    audio_heavy = client.search(**inputs, weights={"audio": 4.0, "text": 1.0}, limit=2)
    text_heavy = client.search(**inputs, weights={"audio": 1.0, "text": 4.0}, limit=2)
    assert name(audio_heavy[0]) == "target.mkv"
    assert name(text_heavy[0]) == "dawn.txt"


def test_a_negative_moves_the_query_off_the_target(client, archive):
    query = {"audio": archive.query("window.wav")}
    plain = client.query_vector(query)
    moved = client.query_vector(query, negative={"text": TEXT}, negative_weight=0.8)
    text = client.query_vector({"text": TEXT})
    assert moved @ text < plain @ text


def test_model_mismatch_names_both_models_and_the_fix(archive):
    settings = archive.settings.model_copy(update={"preset": "imagebind_mid"})
    with MediaSearch(settings) as ms, pytest.raises(ModelMismatchError) as info:
        ms.search(text="anything")
    message = str(info.value)
    assert "imagebind_mid_s0" in message and "imagebind_tiny_s0" in message
    assert "preset 'imagebind_tiny'" in message


def test_query_files_of_the_wrong_kind_or_corrupt_are_refused(client, archive, tmp_path):
    with pytest.raises(ValueError, match="must be image; it is audio"):
        client.search(image=archive.query("window.wav"))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    with pytest.raises(ValueError, match="cannot be decoded"):
        client.search(audio=broken)
    silent = tmp_path / "silent.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=5:duration=1", "-c:v", "mpeg4",
           str(silent))
    with pytest.raises(ValueError, match="gave no audio segments"):
        client.search(audio=silent)
