"""probe(): what libavformat says about generated media (in this process and through an
ffprobe process, the same), and readable errors for bad files."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from media import RECIPES

from ingest.probe import ProbeError, probe
from ingest.segment import windows
from schemas import SegmentPolicy


def test_video_with_sound(media):
    info = probe(media.get("colour_mp4"))
    assert math.isclose(info.duration_s, 6.0, abs_tol=0.1)
    assert (info.video.width, info.video.height, info.video.codec) == (64, 48, "h264")
    assert math.isclose(info.video.fps, 10.0)
    assert info.audio.codec == "aac" and info.audio.sample_rate == 44100


@pytest.mark.parametrize("name", ["colour_webm", "colour_avi", "colour_mkv"])
def test_other_containers(media, name):
    info = probe(media.get(name))
    assert info.has_video and info.has_audio
    assert info.duration_s and 3.5 < info.duration_s < 4.5


def test_rotation_swaps_displayed_size(media):
    video = probe(media.get("rotated_mp4")).video
    assert video.rotation in (90, 270)
    assert (video.width, video.height) == (48, 64)
    assert (video.coded_width, video.coded_height) == (64, 48)


def test_cover_art_is_not_video(media):
    info = probe(media.get("cover_mp3"))
    assert info.video is None and info.has_audio
    assert info.stream_count == 2


def test_audio_only(media):
    info = probe(media.get("tone_flac"))
    assert not info.has_video and info.audio.channels == 2
    assert math.isclose(info.duration_s, 5.0, abs_tol=0.05)


def test_hour_long_file_gets_windows_over_its_whole_duration(media):
    duration = probe(media.get("hour_mp4")).duration_s
    assert math.isclose(duration, 3600, abs_tol=1)
    spans = windows(duration, SegmentPolicy())
    assert len(spans) == 1800 and spans[-1][1] == duration


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "ffprobe"])
def test_random_bytes_raise_with_libav_message(media, isolated):
    with pytest.raises(ProbeError, match="Invalid data"):
        probe(media.get("random_mp4"), isolated=isolated)


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "ffprobe"])
def test_missing_file(tmp_path, isolated):
    with pytest.raises(ProbeError, match="No such file"):
        probe(tmp_path / "absent.mp4", isolated=isolated)


def test_timeout_is_reported(media, tmp_path):
    fresh = tmp_path / "never_probed.mp4"  # a file probed before gets the kept answer
    shutil.copyfile(media.get("colour_mp4"), fresh)
    with pytest.raises(ProbeError, match="timed out"):
        probe(fresh, timeout_s=1e-4, isolated=True)


def _close(a, b) -> bool:
    """Fields equal; floats to ffprobe's printed precision (six decimals)."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return all(_close(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_in_process_probe_says_what_an_ffprobe_process_says(media, name):
    """Every sample file, the hostile ones too: the same MediaInfo, or an error from both."""
    path = media.get(name)
    try:
        by_ffprobe = probe(path, isolated=True)
    except ProbeError:
        with pytest.raises(ProbeError):
            probe(path)
        return
    here = probe(path)
    if here.format_name == "mp3":
        # libav 6 and later leave out an mp3's encoder delay and padding (its LAME header
        # says how many samples), Debian 12's ffprobe 5.1 counts them: up to ~50 ms more.
        assert 0 <= by_ffprobe.duration_s - here.duration_s < 0.06
        assert math.isclose(here.duration_s, round(here.duration_s), abs_tol=1e-3)  # as made
        by_ffprobe = dataclasses.replace(
            by_ffprobe, duration_s=here.duration_s,
            audio=dataclasses.replace(by_ffprobe.audio, duration_s=here.audio.duration_s))
    assert _close(here, by_ffprobe), f"in process {here}\nffprobe    {by_ffprobe}"


def test_a_file_is_probed_once_until_it_changes(media, tmp_path):
    from ingest import probe as probing

    path = tmp_path / "clip.mp4"
    shutil.copyfile(media.get("colour_mp4"), path)
    first = probe(path)
    assert probe(path) == first and probing.launches[str(path)] == 1
    shutil.copyfile(media.get("colour_mkv"), path)  # other bytes at the same path
    assert probe(path).format_name != first.format_name and probing.launches[str(path)] == 2


def test_a_stream_no_decoder_reads_is_described_not_raised(media, tmp_path):
    """A codec this libav has no decoder for: PyAV gives the stream no codec context; the
    probe still says what the container holds (the decoders then refuse it)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hostile import patch_mp4_codec_tag

    path = tmp_path / "unknown_codec.mp4"
    path.write_bytes(patch_mp4_codec_tag(media.get("colour_mp4").read_bytes()))
    here, by_ffprobe = probe(path), probe(path, isolated=True)
    assert here.video.codec == by_ffprobe.video.codec == "?"
    assert here.audio == by_ffprobe.audio and math.isclose(here.duration_s, by_ffprobe.duration_s)
