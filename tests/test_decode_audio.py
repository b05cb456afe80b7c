"""Audio decode: any format → float32 mono 16 kHz windows with the tone's frequency."""

from __future__ import annotations

import numpy as np
import pytest
from media import dominant_hz, media_item

from ingest.decode import decode_item
from ingest.decode.audio import MIN_SAMPLES, cut_windows
from ingest.probe import probe
from ingest.segment import windows
from schemas import Kind, Modality, Rejected, SegmentPolicy, Stage


def decode(media, name, settings, policy=None):
    path = media.get(name)
    return list(decode_item(media_item(path, Kind.AUDIO), path, policy or SegmentPolicy(),
                            settings))


@pytest.mark.parametrize("name", ["tone_wav", "tone_flac", "tone_mp3", "tone_m4a"])
def test_formats_give_windows_of_the_tone(media, decode_settings, name):
    out = decode(media, name, decode_settings)
    assert not any(isinstance(o, Rejected) for o in out), out
    spans = windows(probe(media.get(name)).duration_s, SegmentPolicy())
    assert [(s.start_s, s.end_s) for s in out] == spans and len(spans) == 3
    for seg in out:
        assert seg.modality == Modality.AUDIO and seg.kind == Kind.AUDIO
        assert seg.data.dtype == np.float32 and seg.data.ndim == 1
        assert abs(len(seg.data) - 32000) <= 1200  # codec padding/priming at the ends
        assert abs(dominant_hz(seg.data) - 440) < 5
        assert 0.1 < np.abs(seg.data).max() <= 0.2  # lavfi's sine has amplitude 1/8


def test_overlapping_windows(media, decode_settings):
    out = decode(media, "tone_wav", decode_settings, SegmentPolicy(segment_s=2, stride_s=1))
    assert [(s.start_s, s.end_s) for s in out] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert all(len(s.data) == 32000 for s in out)


def test_cover_art_mp3_is_audio(media, decode_settings):
    out = decode(media, "cover_mp3", decode_settings)
    assert [s.modality for s in out] == [Modality.AUDIO, Modality.AUDIO]


def test_tiny_clip_is_padded_to_one_fbank_frame(media, decode_settings):
    (seg,) = decode(media, "tone_short_wav", decode_settings)
    assert len(seg.data) == MIN_SAMPLES
    assert np.all(seg.data[200:] == 0)  # 10 ms = 160 true samples, then zeros


def test_random_bytes_are_rejected(media, decode_settings):
    (rej,) = decode(media, "random_mp4", decode_settings)
    assert rej.stage == Stage.PROBE and "Invalid data" in rej.reason


def test_cut_windows_streams_chunks_exactly():
    signal = np.arange(16000 * 7, dtype=np.float32)
    chunks = iter(np.array_split(signal, 13))  # odd chunk sizes
    spans = [(0, 2), (1, 3), (2, 4), (5, 7), (6.5, 8.5)]
    got = list(cut_windows(chunks, spans))
    assert [(s, e) for s, e, _ in got] == spans
    for s, _, clip in got[:-1]:
        assert clip[0] == s * 16000 and len(clip) == 32000
    assert len(got[-1][2]) == 8000  # the sound ends at 7 s: true samples only


def test_cut_windows_stops_when_the_sound_has_ended():
    chunks = iter([np.zeros(16000, np.float32)])
    assert [s for s, _, _ in cut_windows(chunks, [(0, 2), (2, 4)])] == [0]


def test_a_duration_over_the_limit_is_rejected(media, decode_settings):
    limited = decode_settings.model_copy(update={"max_media_duration_s": 4.0})
    (rejected,) = decode(media, "tone_wav", limited)  # 5 s of sound
    assert isinstance(rejected, Rejected) and "max_media_duration_s" in rejected.reason
