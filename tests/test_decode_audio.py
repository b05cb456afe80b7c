"""Audio decode: any format → float32 mono 16 kHz windows with the tone's frequency."""

from __future__ import annotations

import numpy as np
import pytest
from media import dominant_hz, ffmpeg, media_item, tone_source

from ingest.decode import decode_item
from ingest.decode.audio import MIN_SAMPLES, cut_windows
from ingest.probe import probe
from ingest.segment import windows
from schemas import Kind, Modality, Rejected, SegmentPolicy, Stage


def decode(media, name, settings, policy=None):
    path = media.get(name)
    return list(decode_item(media_item(path, Kind.AUDIO), path, policy or SegmentPolicy(),
                            settings))


@pytest.mark.parametrize("decoder", ["pyav", "ffmpeg"])
@pytest.mark.parametrize("name", ["tone_wav", "tone_flac", "tone_mp3", "tone_m4a"])
def test_formats_give_windows_of_the_tone(media, decode_settings, name, decoder):
    out = decode(media, name, decode_settings.model_copy(update={"audio_decoder": decoder}))
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


SOUNDS = ["tone_wav", "tone_flac", "tone_mp3", "tone_m4a", "tone_in_mp4", "tone_short_wav",
          "cover_mp3", "colour_mp4", "colour_webm", "colour_avi", "colour_mkv",
          "audio_outlasts_video_mp4"]


@pytest.mark.parametrize("name", SOUNDS)
def test_in_process_audio_equals_the_ffmpeg_process(media, decode_settings, name):
    """PyAV in this process and an ffmpeg process: the same samples from every sample
    file with sound (the same decoder and swresample, as the command line runs them)."""
    from ingest.decode import pyav_audio
    from ingest.decode.audio import CHUNK_SAMPLES, SAMPLE_RATE, ffmpeg_pcm_stream
    from ingest.decode.base import DecodeJob

    path = media.get(name)
    job = DecodeJob(media_item(path, Kind.AUDIO), path, SegmentPolicy(), decode_settings)
    by_process = np.concatenate(list(ffmpeg_pcm_stream(job)))
    chunks = list(pyav_audio.pcm_chunks(path, SAMPLE_RATE, CHUNK_SAMPLES, 60))
    here = np.concatenate(chunks)
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert all(len(c) >= CHUNK_SAMPLES for c in chunks[:-1])  # chunked, not per frame
    assert len(here) == len(by_process), (len(here), len(by_process))
    assert np.abs(here - by_process).max() < 1e-4


def test_in_process_audio_skips_nothing_silently_on_random_bytes(media):
    from ingest.decode import pyav_audio
    from ingest.decode.base import DecodeError

    with pytest.raises(DecodeError, match="audio decode failed"):
        list(pyav_audio.pcm_chunks(media.get("random_mp4"), 16000, 64000, 60))


def test_a_duration_over_the_limit_is_rejected(media, decode_settings):
    limited = decode_settings.model_copy(update={"max_media_duration_s": 4.0})
    (rejected,) = decode(media, "tone_wav", limited)  # 5 s of sound
    assert isinstance(rejected, Rejected) and "max_media_duration_s" in rejected.reason


def test_the_audio_decoder_is_pyav_where_one_file_is_decoded_at_a_time(decode_settings):
    from embed_workers.executors.ray_tasks import _one_at_a_time
    from ingest.decode.audio import audio_decoder

    def chosen(**update) -> str:
        return audio_decoder(decode_settings.model_copy(update=update))

    assert chosen(decode_workers=1) == "pyav"
    assert chosen(decode_workers=2) == "ffmpeg"  # beside other decode threads
    assert chosen(decode_workers=1, video_decoder="ffmpeg") == "ffmpeg"  # no libav in process
    assert chosen(decode_workers=2, audio_decoder="pyav") == "pyav"  # asked for by name
    assert chosen(decode_workers=1, audio_decoder="ffmpeg") == "ffmpeg"
    # A Ray decode actor decodes one file at a time, whatever decode_workers counts.
    many = decode_settings.model_copy(update={"decode_workers": 8})
    assert _one_at_a_time(many).audio_decoder == "pyav"
    assert _one_at_a_time(many.model_copy(update={"audio_decoder": "ffmpeg"})).audio_decoder \
        == "ffmpeg"


def _both(path, settings) -> tuple[np.ndarray, np.ndarray]:
    """The samples of ``path`` in this process and from an ffmpeg process."""
    from ingest.decode import pyav_audio
    from ingest.decode.audio import CHUNK_SAMPLES, SAMPLE_RATE, ffmpeg_pcm_stream
    from ingest.decode.base import DecodeJob

    job = DecodeJob(media_item(path, Kind.AUDIO), path, SegmentPolicy(), settings)
    return (np.concatenate(list(pyav_audio.pcm_chunks(path, SAMPLE_RATE, CHUNK_SAMPLES, 60))),
            np.concatenate(list(ffmpeg_pcm_stream(job))))


def test_a_stream_whose_format_changes_part_way_decodes_in_process(tmp_path, decode_settings):
    """Two mp3s joined byte for byte, 44.1-kHz stereo then 22.05-kHz mono: one resampler
    takes one input format, so the decoder starts a new one at the change, as ffmpeg's
    command line rebuilds its filters."""
    parts = []
    for name, rate, channels in (("a", 44100, "2"), ("b", 22050, "1")):
        parts.append(tmp_path / f"{name}.mp3")
        ffmpeg(*tone_source(2.0, rate=rate), "-ac", channels, str(parts[-1]))
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    here, by_process = _both(joined, decode_settings)
    assert abs(len(here) - len(by_process)) <= 0.005 * len(by_process)
    assert len(here) >= 3.9 * 16000
    for half in (here[:16000], here[-16000:]):
        assert abs(dominant_hz(half) - 440) < 5


def _garble_adts(data: bytes, keep_every: int) -> bytes:
    """An ADTS stream with every frame's payload but one in ``keep_every`` replaced by
    noise (headers kept, so the demuxer still finds every frame)."""
    out, at, index = bytearray(data), 0, 0
    noise = np.random.default_rng(0)
    while at + 7 <= len(out):
        assert out[at] == 0xFF and out[at + 1] & 0xF0 == 0xF0, "not an ADTS frame header"
        length = ((out[at + 3] & 3) << 11) | (out[at + 4] << 3) | (out[at + 5] >> 5)
        if index % keep_every:
            out[at + 7:at + length] = noise.integers(0, 256, length - 7, np.uint8).tobytes()
        at, index = at + length, index + 1
    return bytes(out)


def test_mostly_undecodable_audio_is_refused_both_ways(tmp_path, decode_settings):
    """Past ffmpeg's -max_error_rate (2/3 of the packets failing) the command line
    refuses the file; in process it is refused too, not returned as the few frames
    that decoded."""
    from ingest.decode import pyav_audio
    from ingest.decode.audio import ffmpeg_pcm_stream
    from ingest.decode.base import DecodeError, DecodeJob

    clean = tmp_path / "tone.aac"
    ffmpeg(*tone_source(5.0), "-c:a", "aac", "-f", "adts", str(clean))
    garbled = tmp_path / "garbled.aac"
    garbled.write_bytes(_garble_adts(clean.read_bytes(), keep_every=10))
    with pytest.raises(DecodeError, match="packets could not be decoded"):
        list(pyav_audio.pcm_chunks(garbled, 16000, 64000, 60))
    job = DecodeJob(media_item(garbled, Kind.AUDIO), garbled, SegmentPolicy(), decode_settings)
    with pytest.raises(DecodeError, match="audio decode failed"):
        list(ffmpeg_pcm_stream(job))
    here, by_process = _both(clean, decode_settings)  # the clean stream: the same samples
    assert len(here) == len(by_process) and np.abs(here - by_process).max() < 1e-4


def test_the_time_limit_bounds_one_chunk_not_the_consumer(media):
    """As for the ffmpeg pipe, a consumer slower than the limit keeps the stream; the
    limit itself still holds for the decoder's own work."""
    import time

    from ingest.decode import pyav_audio
    from ingest.decode.base import DecodeError

    path = media.get("tone_wav")  # 5 s: two chunks of 2 s and the rest
    chunks = []
    # A limit wide enough for a loaded machine to decode 2 s of wav (well under a
    # millisecond alone), narrower than the consumer's pauses added up.
    for chunk in pyav_audio.pcm_chunks(path, 16000, 32000, timeout_s=2.0):
        chunks.append(chunk)
        time.sleep(1.5)  # the pauses add up to more than the limit
    assert sum(len(c) for c in chunks) >= 4.9 * 16000 and len(chunks) >= 2
    with pytest.raises(DecodeError, match="timed out"):
        list(pyav_audio.pcm_chunks(path, 16000, 16000, timeout_s=1e-9))


@pytest.mark.parametrize("decoder, starts_a_process", [("pyav", False), ("ffmpeg", True)])
def test_the_chosen_audio_decoder_is_the_one_that_runs(media, decode_settings, decoder,
                                                       starts_a_process):
    """In process no child runs at all; the ffmpeg route spends CPU in one (this
    process's reaped children's CPU time)."""
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    settings = decode_settings.model_copy(update={"audio_decoder": decoder})
    path = media.get("tone_flac")
    probe(path)  # the probe's own process (if any) before the count
    before = children_cpu()
    out = decode(media, "tone_flac", settings)
    assert out and not any(isinstance(o, Rejected) for o in out)
    assert (children_cpu() > before) == starts_a_process
