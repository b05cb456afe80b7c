"""ingest.kinds: naming convention, magic bytes, text, and ffprobe for ambiguous media."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import ffmpeg_bytes, image_bytes

from ingest.kinds import HEAD_BYTES, NAMING, classify, detect_kind
from schemas import Kind


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real media from ffmpeg's lavfi sources, one file per container/codec."""
    root = tmp_path_factory.mktemp("kinds")
    video = ("-i", "testsrc=d=0.4:s=32x32:r=10", "-pix_fmt", "yuv420p")
    tone = ("-i", "sine=d=0.3")
    made = {
        "video.mp4": video, "video.mkv": video, "video.avi": video,
        "video.webm": (*video, "-c:v", "libvpx"),
        "audio.wav": tone, "audio.flac": tone, "audio.mp3": tone, "audio.ogg": tone,
        "audio.m4a": tone, "audio_only.mp4": (*tone, "-c:a", "aac"),
        "audio_only.webm": (*tone, "-c:a", "libopus"),
        "still.mkv": ("-i", "testsrc=d=0.1:s=32x32:r=10", "-frames:v", "1"),
    }
    for name, args in made.items():
        ffmpeg_bytes(root, name, *args)
    return root


def head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEAD_BYTES)


@pytest.mark.parametrize(("fmt", "mime"), [
    ("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
    ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("TIFF", "image/tiff"),
])
def test_images_are_found_by_magic_whatever_their_name(fmt, mime):
    data = image_bytes(fmt)
    for name in (f"x.{fmt.lower()}", "x.bin", "holiday.mp4", "noext"):
        detection = classify(name, data[:HEAD_BYTES])
        assert (detection.kind, detection.mime) == (Kind.IMAGE, mime), name


@pytest.mark.parametrize(("name", "kind"), [
    ("scan.depth.png", Kind.DEPTH), ("a/b/Scan.DEPTH.PNG", Kind.DEPTH),
    ("scan.depth.npy", Kind.DEPTH), ("scan.depth.exr", Kind.DEPTH),
    ("cam.thermal.png", Kind.THERMAL), ("cam.thermal.tif", Kind.THERMAL),
    ("cam.thermal.tiff", Kind.THERMAL), ("cam.thermal.jpg", Kind.THERMAL),
    ("walk.imu.csv", Kind.IMU), ("walk.imu.npy", Kind.IMU), ("walk.imu.parquet", Kind.IMU),
])
def test_naming_convention_wins_over_magic(name, kind):
    # A depth PNG holds PNG bytes: the name, checked first, says what they mean.
    assert detect_kind(name, image_bytes("PNG")[:64]) is kind


def test_every_naming_rule_has_a_kind_and_mime():
    assert all(isinstance(k, Kind) and "/" in m for k, m in NAMING.values())


@pytest.mark.parametrize("name", ["a.txt", "b.md", "c.srt", "d.vtt", "E.TXT"])
def test_text_by_extension(name):
    assert detect_kind(name, "un café, s'il vous plaît\n".encode()) is Kind.TEXT


def test_binary_content_in_a_text_file_is_refused():
    detection = classify("a.txt", b"abc\x00\x01\x02")
    assert detection.kind is None and "binary" in detection.reason


@pytest.mark.parametrize("name", ["meta.json", "table.csv", "blob.xyz", "noext"])
def test_unknown_files_are_unsupported_with_a_reason(name):
    detection = classify(name, b"\x01\x02\x03\x04 whatever")
    assert detection.kind is None and "unsupported file type" in detection.reason


@pytest.mark.parametrize(("name", "kind", "mime"), [
    ("audio.wav", Kind.AUDIO, "audio/wav"),
    ("audio.flac", Kind.AUDIO, "audio/flac"),
    ("audio.mp3", Kind.AUDIO, "audio/mpeg"),
    ("audio.m4a", Kind.AUDIO, "audio/mp4"),
    ("video.avi", Kind.VIDEO, "video/x-msvideo"),
])
def test_unambiguous_containers_need_no_ffprobe(media, name, kind, mime):
    detection = classify(name, head(media / name), path=None)
    assert (detection.kind, detection.mime) == (kind, mime)


@pytest.mark.parametrize(("name", "kind", "mime"), [
    ("video.mp4", Kind.VIDEO, "video/mp4"),
    ("video.mkv", Kind.VIDEO, "video/x-matroska"),
    ("video.webm", Kind.VIDEO, "video/x-matroska"),
    ("audio_only.mp4", Kind.AUDIO, "audio/mp4"),
    ("audio_only.webm", Kind.AUDIO, "audio/x-matroska"),
    ("audio.ogg", Kind.AUDIO, "audio/ogg"),
])
def test_ambiguous_containers_are_decided_by_ffprobe(media, name, kind, mime):
    path = media / name
    assert classify(name, head(path), path=None).kind is None  # no file: no verdict
    detection = classify(name, head(path), path=path)
    assert (detection.kind, detection.mime) == (kind, mime)


def test_a_single_frame_video_is_not_video(media):
    path = media / "still.mkv"
    detection = classify("still.mkv", head(path), path)
    assert detection.kind is None and "no moving video" in detection.reason


def test_media_extension_with_garbage_reports_probe_failure(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video at all" * 10)
    detection = classify("broken.mp4", path.read_bytes(), path)
    assert detection.kind is None and "probe failed" in detection.reason


def test_media_extension_without_magic_is_probed(media, tmp_path):
    # Junk before the first Ogg page hides the magic; ffprobe resyncs and decides.
    headless = tmp_path / "headless.ogg"
    headless.write_bytes(b"\x00" * 8 + (media / "audio.ogg").read_bytes())
    assert classify("headless.ogg", head(headless), None).kind is None  # needs ffprobe
    detection = classify("headless.ogg", head(headless), headless)
    assert (detection.kind, detection.mime) == (Kind.AUDIO, "audio/ogg")


def test_an_audio_file_with_a_video_name_is_audio(media, tmp_path):
    path = tmp_path / "renamed.mp4"
    path.write_bytes((media / "audio.wav").read_bytes())
    assert detect_kind("renamed.mp4", head(path), path) is Kind.AUDIO  # RIFF WAVE magic
