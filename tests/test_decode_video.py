"""Video decode: shapes, timing of the frames per window, soundtrack, odd and broken files.

Every decode test runs on both frame backends (PyAV in-process, ffmpeg processes).
"""

from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pytest
from media import colour_source, dominant_hz, ffmpeg, media_item, second_of

from ingest.decode import decode_item, nvdec_frames, pyav_frames, video
from ingest.decode.base import DecodeError
from ingest.decode.video import (
    FFMPEG,
    NVDEC,
    PYAV,
    check_video_decoder,
    frame_backend,
    frame_targets,
    plan_runs,
    scaled_size,
)
from ingest.probe import probe
from ingest.segment import windows
from schemas import Kind, MediaItem, Modality, Rejected, Segment, SegmentPolicy, Settings, Stage


@pytest.fixture(params=["pyav", "ffmpeg"])
def decode_settings(request, decode_settings):
    """The session's decode settings, once per frame backend."""
    return decode_settings.model_copy(update={"video_decoder": request.param})


def decode(media, name, settings, policy=None, kind=Kind.VIDEO):
    path = media.get(name) if isinstance(name, str) else name
    return list(decode_item(media_item(path, kind), path, policy or SegmentPolicy(), settings))


def of(out, modality):
    return [s for s in out if isinstance(s, Segment) and s.modality == modality]


def test_clips_are_first_and_last_frame_of_each_window(media, decode_settings):
    out = decode(media, "colour_mp4", decode_settings)
    clips = of(out, Modality.VISION)
    assert [(c.start_s, c.end_s) for c in clips] == [(0, 2), (2, 4), (4, 6)]
    assert [c.index for c in clips] == [0, 1, 2]
    for clip in clips:
        assert clip.data.dtype == np.uint8 and clip.data.shape == (2, 48, 64, 3)
        assert clip.kind == Kind.VIDEO and clip.extra == {
            "width": 64, "height": 48, "decoder": decode_settings.video_decoder}
        assert second_of(clip.data[0]) == clip.start_s  # the frame shown at the start
    # the last frame is the one shown at the window's end (shared with the next window),
    # and for the final window the last frame of the stream
    assert [second_of(c.data[1]) for c in clips] == [2, 4, 6]  # 6 = the frame at 5.9 s


def test_soundtrack_gives_audio_windows_for_the_same_spans(media, decode_settings):
    out = decode(media, "colour_mp4", decode_settings)
    sound = of(out, Modality.AUDIO)
    assert [(a.start_s, a.end_s, a.index) for a in sound] == [(0, 2, 0), (2, 4, 1), (4, 6, 2)]
    for a in sound:
        assert a.data.dtype == np.float32 and a.data.shape == (32000,)
        assert a.kind == Kind.VIDEO
        assert abs(dominant_hz(a.data) - 440) < 5
    assert not any(isinstance(o, Rejected) for o in out)


@pytest.mark.parametrize("name", ["colour_webm", "colour_avi", "colour_mkv", "long_gop_mp4"])
def test_containers_and_codecs(media, decode_settings, name):
    clips = of(decode(media, name, decode_settings), Modality.VISION)
    spans = windows(probe(media.get(name)).duration_s, SegmentPolicy())
    assert [(c.start_s, c.end_s) for c in clips] == spans
    for clip in clips:
        assert clip.data.shape == (2, 48, 64, 3)
        assert second_of(clip.data[0]) == round(clip.start_s)


def test_no_audio_track_gives_vision_only(media, decode_settings):
    out = decode(media, "no_audio_mp4", decode_settings)
    assert len(of(out, Modality.VISION)) == 2 and not of(out, Modality.AUDIO)
    assert not any(isinstance(o, Rejected) for o in out)


def test_rotated_video_is_shown_upright_size(media, decode_settings):
    clips = of(decode(media, "rotated_mp4", decode_settings), Modality.VISION)
    assert clips[0].data.shape == (2, 64, 48, 3)
    assert clips[0].extra == {"width": 48, "height": 64, "decoder": decode_settings.video_decoder}


def test_shorter_than_a_window(media, decode_settings):
    out = decode(media, "short_mp4", decode_settings)
    (clip,) = of(out, Modality.VISION)
    assert clip.start_s == 0 and 0.4 < clip.end_s <= 0.6
    assert second_of(clip.data[0]) == 0 and second_of(clip.data[1]) == 0
    (sound,) = of(out, Modality.AUDIO)
    assert 400 <= len(sound.data) <= 0.6 * 16000


def test_variable_frame_rate(media, decode_settings):
    # frames every 0.1 s up to 1 s, then every 0.5 s; duration 3.6 s: windows (0,2), (1.6,3.6)
    clips = of(decode(media, "vfr_mkv", decode_settings), Modality.VISION)
    assert [(c.start_s, c.end_s) for c in clips] == [(0, 2), (1.6, 3.6)]
    # the first frame at or after the window start (2.0 s here: none between 1.5 and 2.0)
    assert [second_of(c.data[0]) for c in clips] == [0, 2]
    assert second_of(clips[1].data[1]) == 4  # the last frame (3.5 s)


def test_container_longer_than_the_video_takes_the_last_frame(media, decode_settings):
    out = decode(media, "audio_outlasts_video_mp4", decode_settings)
    clips = of(out, Modality.VISION)
    assert len(clips) == 2 and len(of(out, Modality.AUDIO)) == 2
    assert second_of(clips[1].data[0]) == 2 and second_of(clips[1].data[1]) == 2  # 1.9 s


def test_video_kind_without_video_stream_is_treated_as_audio(media, decode_settings):
    out = decode(media, "tone_in_mp4", decode_settings)
    assert not of(out, Modality.VISION)
    assert len(of(out, Modality.AUDIO)) == 2


@pytest.mark.parametrize(("name", "stage", "words"), [
    ("random_mp4", Stage.PROBE, "Invalid data"),
    ("truncated_mp4", Stage.PROBE, "moov atom not found"),
    ("zero_streams", Stage.DECODE, "no audio stream"),
    # ffmpeg's process fails; PyAV skips the damaged packets and finds no frame at all.
    # A video refused while its frames are decoded names the decoder that refused it.
    ("truncated_faststart_mp4", Stage.DECODE,
     r"(video decode failed|truncated or corrupt).*\(decoder (pyav|ffmpeg)\)$"),
])
def test_broken_files_are_rejected_with_a_reason(media, decode_settings, name, stage, words):
    out = decode(media, name, decode_settings)
    assert isinstance(out[-1], Rejected), out
    assert out[-1].stage == stage and re.search(words, out[-1].reason)
    assert out[-1].item_id == media.get(name).name


@pytest.mark.slow  # ~5 s: 1801 frames in ~20 ffmpeg processes
def test_hour_long_file_is_covered_end_to_end(media, decode_settings):
    started = time.monotonic()
    clips = of(decode(media, "hour_mp4", decode_settings), Modality.VISION)
    assert len(clips) == 1800
    assert clips[-1].end_s == pytest.approx(3600, abs=1)
    assert [c.index for c in clips] == list(range(1800))
    # decoding 2 frames per window is the point; keep the test honest about its cost
    if time.monotonic() - started > 60:
        pytest.fail("an hour of 64x48 video took over a minute to segment")


def test_scaled_size_matches_short_side_scale():
    assert scaled_size(1280, 720) == (398, 224)
    assert scaled_size(720, 1280) == (224, 398)
    assert scaled_size(200, 100) == (200, 100)  # never upscaled


def test_frame_targets_share_window_boundaries():
    pairs = frame_targets([(0, 2), (2, 4), (4, 5)], fps=10)
    assert pairs[0][1] == pairs[1][0]  # the end frame of one window is the next one's start
    assert pairs[2][1] == pytest.approx(4.9 - 0.025)  # final window: last frame of the stream


def test_plan_runs_seeks_only_across_keyframes():
    targets = [0.0, 2.0, 4.0, 6.0, 8.0]
    assert plan_runs(targets, keyframes=[0.0], slack=0.01) == [targets]
    assert plan_runs(targets, keyframes=[0.0, 2.0, 4.0, 6.0, 8.0], slack=0.01) == [
        [0.0], [2.0], [4.0], [6.0], [8.0]]
    assert plan_runs([0.0, 0.5], keyframes=[0.0, 0.5], slack=0.01) == [[0.0, 0.5]]


def test_a_rejection_names_the_member_not_the_spool_file(media, decode_settings, tmp_path):
    spooled = tmp_path / "mb-1a2b3c.mp4"  # how an archive member looks on disk while decoded
    spooled.write_bytes(media.get("random_mp4").read_bytes())
    item = MediaItem("id", "/data/a.tar", "clips/broken.mp4", spooled.stat().st_size,
                     Kind.VIDEO, locations=("/data/a.tar!/clips/broken.mp4",))
    (rejection,) = decode_item(item, spooled, SegmentPolicy(), decode_settings)
    assert "clips/broken.mp4" in rejection.reason and "mb-1a2b3c" not in rejection.reason


# --- the two frame backends ----------------------------------------------------------------


def _clips(path, decoder, settings):
    chosen = settings.model_copy(update={"video_decoder": decoder})
    return [s.data for s in decode_item(media_item(path, Kind.VIDEO), path, SegmentPolicy(), chosen)
            if isinstance(s, Segment) and s.modality == Modality.VISION]


@pytest.mark.parametrize("name", ["colour_mp4", "colour_webm", "long_gop_mp4", "rotated_mp4",
                                  "vfr_mkv", "audio_outlasts_video_mp4"])
def test_both_backends_give_the_same_frames(media, decode_settings, name):
    ours, theirs = _clips(media.get(name), "pyav", decode_settings), \
        _clips(media.get(name), "ffmpeg", decode_settings)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)  # small videos are not scaled: the same pixels


def test_both_backends_scale_720p_frames_alike(tmp_path, decode_settings):
    """Scaled frames come from swscale's bilinear filter either way; PyAV's libraries are
    another build than the system ffmpeg's, so values may differ by a level or so."""
    path = tmp_path / "hd.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30:duration=4", "-c:v", "libx264", "-g", "60",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    ours, theirs = _clips(path, "pyav", decode_settings), _clips(path, "ffmpeg", decode_settings)
    assert len(ours) == len(theirs) == 2 and ours[0].shape == theirs[0].shape == (2, 224, 398, 3)
    for a, b in zip(ours, theirs, strict=True):
        difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 16  # seen: 0.5, 10


def test_the_decoder_setting_picks_the_backend(monkeypatch):
    assert frame_backend("ffmpeg") is FFMPEG
    assert frame_backend("pyav") is PYAV and frame_backend("auto") is PYAV  # PyAV is a dependency
    monkeypatch.setattr(pyav_frames, "av", None)  # as on a machine without PyAV
    assert frame_backend("auto") is FFMPEG
    with pytest.raises(DecodeError, match="pip install av"):
        frame_backend("pyav")


needs_nvdec = pytest.mark.skipif(not nvdec_frames.available(),
                                 reason=f"NVDEC: {nvdec_frames.unavailable_reason()}")


def test_without_nvdec_video_falls_back_to_the_cpu_decoder(caplog):
    if nvdec_frames.available():
        pytest.skip("this machine has NVDEC: the fallback is not what runs here")
    reason = nvdec_frames.unavailable_reason()
    assert reason and ("CUDA" in reason or "PyNvVideoCodec" in reason)
    assert frame_backend("auto", "h264") is PYAV
    video._warn_no_nvdec.cache_clear()  # warned once per process: not by an earlier test
    with caplog.at_level("WARNING"):
        assert frame_backend("nvdec", "h264") is PYAV  # a Ray decode actor on a CPU-only node
    assert "decodes video on the CPU" in caplog.text and reason in caplog.text
    with pytest.raises(DecodeError, match=r"MEDIABIND_VIDEO_DECODER=nvdec, but .*set it to auto"):
        check_video_decoder("nvdec")


def test_a_local_run_asking_for_nvdec_without_it_is_refused_before_anything_is_made(
        tmp_path, media):
    from flows.run import start_run

    if nvdec_frames.available():
        pytest.skip("this machine has NVDEC")
    home = tmp_path / "home"
    settings = Settings(home=home, preset="imagebind_tiny", device="cpu", video_decoder="nvdec")
    with pytest.raises(ValueError, match="MEDIABIND_VIDEO_DECODER=nvdec, but"):
        start_run(str(media.get("colour_mp4")), settings, executor="local")
    assert not home.exists() or list(home.rglob("*")) == []  # no store, lock or report


def test_codecs_nvdec_does_not_take_stay_on_the_cpu():
    assert not nvdec_frames.supports("mpeg4") and not nvdec_frames.supports(None)
    assert nvdec_frames.supports("h264") and nvdec_frames.supports("HEVC")
    assert frame_backend("auto", "mpeg4") is PYAV and frame_backend("nvdec", "vp8") is PYAV


@needs_nvdec
def test_nvdec_gives_the_cpu_decoders_frames(tmp_path, decode_settings):
    """On a GPU: the same windows and times as PyAV; pixels differ by the resize only."""
    path = tmp_path / "hd.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30:duration=6", "-c:v", "libx264", "-g", "60",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    assert frame_backend("auto", "h264") is NVDEC
    gpu, cpu = _clips(path, "nvdec", decode_settings), _clips(path, "pyav", decode_settings)
    assert len(gpu) == len(cpu) == 3 and gpu[0].shape == cpu[0].shape == (2, 224, 398, 3)
    for a, b in zip(gpu, cpu, strict=True):
        difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert difference.mean() < 3 and np.percentile(difference, 99) <= 32


# --- keyframe sampling ------------------------------------------------------------------------


def test_keyframe_sampling_takes_the_keyframe_nearest_each_frame_time(tmp_path, decode_settings):
    """A 6-s colour clock (each frame's red channel tells its second), keyframes every 3 s."""
    path = tmp_path / "gop3.mp4"
    ffmpeg(*colour_source(6), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-g", "30", "-sc_threshold", "0", str(path))
    keyframe = SegmentPolicy(sampling="keyframe")
    exact = [[second_of(f) for f in c.data] for c in of(decode(tmp_path, path, decode_settings),
                                                         Modality.VISION)]
    nearest = [[second_of(f) for f in c.data]
               for c in of(decode(tmp_path, path, decode_settings, keyframe), Modality.VISION)]
    assert exact == [[0, 2], [2, 4], [4, 6]]
    # Keyframes at 0 and 3 s: 2 s, 4 s and the last frame (5.9 s) all lie nearest 3 s.
    assert nearest == [[0, 3], [3, 3], [3, 3]]


def test_keyframe_sampling_is_a_policy_of_its_own():
    exact, keyframe = SegmentPolicy(), SegmentPolicy(sampling="keyframe")
    assert exact.policy_id == "w2s2c3u"  # ids of existing collections are unchanged
    assert keyframe.policy_id == "w2s2c3uk"
    assert Settings(video_sampling="keyframe").policy == keyframe
    with pytest.raises(ValueError, match="sampling must be one of exact, keyframe"):
        SegmentPolicy(sampling="nearest")


def test_both_backends_time_keyframes_from_the_container_start(tmp_path, decode_settings):
    """MPEG-TS starts its clock at about 1.4 s; keyframe times count from there in both."""
    path = tmp_path / "clock.ts"
    ffmpeg(*colour_source(4), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-g", "10", "-f", "mpegts", str(path))
    ours = PYAV.keyframe_times(path, 30)
    theirs = FFMPEG.keyframe_times(path, 30)
    assert ours == pytest.approx(theirs, abs=1e-3)
    assert ours[0] == pytest.approx(0.0, abs=0.15) and len(ours) == 4
    clips = _clips(path, "pyav", decode_settings)
    assert clips and [[second_of(f) for f in c] for c in clips] == \
        [[second_of(f) for f in c] for c in _clips(path, "ffmpeg", decode_settings)]


def test_a_video_nvdec_fails_on_is_decoded_on_the_cpu_instead(media, decode_settings, caplog):
    """Here NVDEC really fails (no GPU, no PyNvVideoCodec session): the frame source
    switches to the CPU backend and gives the CPU's frames, never a rejection."""
    from ingest.decode.base import DecodeJob
    from ingest.decode.video import FrameSource

    if nvdec_frames.available():
        pytest.skip("NVDEC works on this machine")
    path = media.get("colour_mp4")
    job = DecodeJob(media_item(path, Kind.VIDEO), path, SegmentPolicy(), decode_settings)
    targets = [0.0, 2.0, 4.0]
    forced = FrameSource(job, (64, 48), 10.0, targets, backend=NVDEC)
    cpu = FrameSource(job, (64, 48), 10.0, targets, backend=PYAV)
    with caplog.at_level("WARNING"):
        got = [forced.at(t) for t in targets]
    assert forced.backend is PYAV and "NVDEC failed on" in caplog.text
    for ours, theirs in zip(got, [cpu.at(t) for t in targets], strict=True):
        assert ours.time_s == theirs.time_s
        np.testing.assert_array_equal(ours.pixels, theirs.pixels)


def test_a_duration_over_the_limit_is_rejected(media, decode_settings):
    limited = decode_settings.model_copy(update={"max_media_duration_s": 4.0})
    out = decode(media, "colour_mp4", limited)  # 6 s
    assert not of(out, Modality.VISION) and not of(out, Modality.AUDIO)
    (rejected,) = [o for o in out if isinstance(o, Rejected)]
    assert "max_media_duration_s" in rejected.reason
