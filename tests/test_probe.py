"""probe(): what ffprobe says about generated media, and readable errors for bad files."""

from __future__ import annotations

import math
import shutil

import pytest

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


def test_random_bytes_raise_with_ffprobe_message(media):
    with pytest.raises(ProbeError, match="Invalid data|ffprobe"):
        probe(media.get("random_mp4"))


def test_missing_file(tmp_path):
    with pytest.raises(ProbeError, match="No such file"):
        probe(tmp_path / "absent.mp4")


def test_timeout_is_reported(media, tmp_path):
    fresh = tmp_path / "never_probed.mp4"  # a file probed before gets the kept answer
    shutil.copyfile(media.get("colour_mp4"), fresh)
    with pytest.raises(ProbeError, match="timed out"):
        probe(fresh, timeout_s=1e-4)


def test_a_file_is_probed_once_until_it_changes(media, tmp_path):
    from ingest import probe as probing

    path = tmp_path / "clip.mp4"
    shutil.copyfile(media.get("colour_mp4"), path)
    first = probe(path)
    assert probe(path) == first and probing.launches[str(path)] == 1
    shutil.copyfile(media.get("colour_mkv"), path)  # other bytes at the same path
    assert probe(path).format_name != first.format_name and probing.launches[str(path)] == 2
