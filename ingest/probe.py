"""What a media file holds: duration, the first real video stream (cover art is not
video), the first audio stream.

``probe(path)`` raises :class:`ProbeError` (with the demuxer's own message) for
anything libavformat cannot read; decoders turn that into a ``Rejected``.

Two ways to ask, the same answer (``tests/test_probe.py`` compares them on every
sample file): in this process with PyAV (the default: opening the container and
decoding its first video frame costs several times less CPU than starting an
ffprobe process; ``benchmarks/decode.py`` prints both), or an
ffprobe process (``isolated``, when ``MEDIABIND_VIDEO_DECODER=ffmpeg`` asks that
no libav code run in the worker; ``probe_for`` decides from the settings). In
this process a probe is bounded by libavformat's probe size (5 MB read at most)
rather than by a timeout, and a crash inside libav would take the worker with it,
as PyAV's frame decoding already would.

One probe per file: the classifier (``ingest.kinds``, for ambiguous
containers), the duration of the item (``pipeline.probe_duration``) and the
decoders all ask about the same spooled file in the same process (a decode
thread, a Ray decode actor), so the answer is kept, keyed by the file as it is
on disk (path, inode, size, mtime), and the later askers get it without a
second probe. The keyframe index of a video is a different question (a demux
pass over its packets) and is asked by the frame decoders.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ingest.ffmpeg_run import FFmpegError, run_capture


class ProbeError(RuntimeError):
    """The file could not be read as media; the message says why, in libav's words."""


@dataclass(frozen=True, slots=True)
class VideoStreamInfo:
    """The first video stream. ``width``/``height`` are as displayed (rotation applied)."""

    index: int
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # degrees, multiple of 90, as ffmpeg's autorotate will apply it
    fps: float | None  # average frame rate; None when the container does not say
    frames: int | None
    duration_s: float | None

    @property
    def width(self) -> int:
        return self.coded_height if self.rotation % 180 else self.coded_width

    @property
    def height(self) -> int:
        return self.coded_width if self.rotation % 180 else self.coded_height


@dataclass(frozen=True, slots=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int | None
    channels: int | None
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """A file as libavformat sees it; ``duration_s`` is None when nobody knows it."""

    format_name: str
    duration_s: float | None
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None
    stream_count: int

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


KEPT_PROBES = 256  # answers kept per process: far more than the files in flight
_kept: OrderedDict[tuple[str, int, int, int, bool], MediaInfo] = OrderedDict()
_kept_lock = threading.Lock()
launches: Counter[str] = Counter()  # probes run (not kept answers), per file (tests read it)


def probe(path: Path, timeout_s: float = 30, *, isolated: bool = False) -> MediaInfo:
    """Probe ``path`` into a :class:`MediaInfo`, once per file: a file unchanged since it
    was probed gets the kept answer. ``isolated``: in an ffprobe process bounded by
    ``timeout_s``, rather than in this process."""
    key = _identity(path, isolated)
    with _kept_lock:
        if key is not None and key in _kept:
            _kept.move_to_end(key)
            return _kept[key]
    with _kept_lock:
        launches[str(path)] += 1
    info = _run_ffprobe(path, timeout_s) if isolated else _probe_here(path)
    if key is not None:
        with _kept_lock:
            _kept[key] = info
            while len(_kept) > KEPT_PROBES:
                _kept.popitem(last=False)
    return info


def forget_kept() -> None:
    """Drop the kept answers: the next probe of every file runs (benchmarks measure it)."""
    with _kept_lock:
        _kept.clear()


def probe_for(path: Path, settings: Any) -> MediaInfo:
    """``probe`` as ``settings`` (``schemas.Settings``) ask: in an ffprobe process when the
    video decoder is ffmpeg's (no libav code in the worker), else in this process."""
    return probe(path, settings.ffmpeg_timeout_s, isolated=probe_isolated(settings))


def probe_isolated(settings: Any) -> bool:
    """Whether ``settings`` want probes in an ffprobe process (see the module doc): when
    the video decoder is ffmpeg's, or where PyAV is not installed."""
    return settings.video_decoder == "ffmpeg" or importlib.util.find_spec("av") is None


def _identity(path: Path, isolated: bool) -> tuple[str, int, int, int, bool] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the probe says what is wrong with it
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, isolated


def _run_ffprobe(path: Path, timeout_s: float) -> MediaInfo:
    args = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
            "-show_streams", str(path)]
    try:
        out, _ = run_capture(args, timeout_s)
        raw = json.loads(out or b"{}")
    except FFmpegError as e:
        raise ProbeError(f"ffprobe failed on {Path(path).name}: {e}") from None
    except json.JSONDecodeError as e:
        raise ProbeError(f"ffprobe gave unreadable JSON for {Path(path).name}: {e}") from None
    if "format" not in raw:
        raise ProbeError(f"ffprobe found no container format in {Path(path).name}")
    return media_info(raw)


def _probe_here(path: Path) -> MediaInfo:
    """The same MediaInfo as ffprobe's, from PyAV in this process. The rotation comes from
    the first video frame's display matrix (PyAV shows no stream side data), so a video
    stream costs the decode of one frame, looked for in at most ``ROTATION_PACKETS``."""
    import av

    _keep_libav_errors()
    name = Path(path).name
    with av.logging.Capture(local=True) as logged:  # this thread's libav errors only
        try:
            return _read_here(path)
        except ProbeError:
            raise
        except Exception as e:  # whatever a hostile file makes libav or PyAV raise
            raise ProbeError(f"could not read {name} as media: "
                             f"{_libav_words(e, logged)}") from None


def _read_here(path: Path) -> MediaInfo:
    import av

    with av.open(str(path), metadata_errors="ignore") as container:
        streams = list(container.streams)
        video_stream = next((s for s in streams if _is_real_video_here(s)), None)
        audio_stream = next((s for s in streams if s.type == "audio"), None)
        video = None
        if video_stream is not None:  # sizes as the container says, before any decode
            video = _video_here(video_stream)
            rotation = _first_rotation(container, video_stream)
            video = dataclasses.replace(video, rotation=rotation)
        audio = _audio_here(audio_stream) if audio_stream is not None else None
        duration = _positive(container.duration / 1_000_000) if container.duration else None
        format_name = container.format.name
    if duration is None:  # some containers only know per-stream durations
        durations = [d for d in (video and video.duration_s, audio and audio.duration_s) if d]
        duration = max(durations, default=None)
    return MediaInfo(format_name, duration, video, audio, len(streams))


def _libav_words(exc: BaseException, logged: list[tuple[int, str, str]]) -> str:
    """The error's words, then libav's last error this thread logged (``moov atom not
    found``), as ffprobe's stderr would say them. PyAV holds back a message that repeats
    the one before it, so a file failing as the last one did falls back to the error PyAV
    kept with the exception (process-wide: under concurrent probes, possibly another
    file's words, which only the message would show)."""
    words = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    last = next((m.strip() for _level, _name, m in reversed(logged) if m.strip()), None)
    kept = getattr(exc, "log", None)
    if last is None and kept and len(kept) == 3 and str(kept[2]).strip():
        last = str(kept[2]).strip()
    return f"{words} ({last})" if last else words


@functools.cache
def _keep_libav_errors() -> None:
    """Let libav's error messages reach PyAV, once per process, so that each probe can
    capture its own thread's (``av.logging.Capture``). PyAV passes what reaches it on to
    Python's ``libav`` logger: that logger prints nothing unless the application
    configures it, as before, when libav logged nothing at all. Only errors are passed,
    so the cost falls on damaged files alone."""
    import av.logging

    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)
        quiet = logging.getLogger("libav")
        if not quiet.handlers and quiet.level == logging.NOTSET:
            quiet.addHandler(logging.NullHandler())
            quiet.propagate = False


def _is_real_video_here(stream: Any) -> bool:
    import av

    return stream.type == "video" and not stream.disposition & av.stream.Disposition.attached_pic


ROTATION_PACKETS = 256  # packets read for the first frame's rotation, at most


def _first_rotation(container: Any, stream: Any) -> int:
    """The rotation of the stream's first decodable frame, as ffprobe reports the stream's
    display matrix; else the legacy ``rotate`` tag. Bounded: at most ``ROTATION_PACKETS``
    packets, one decoder thread; 0 when no frame comes (the frame decoders then say what
    is wrong)."""
    import av

    context = stream.codec_context
    rotation = 0
    if context is not None:
        context.thread_count = 1  # decode workers are the parallelism
        try:
            for count, packet in enumerate(container.demux(stream)):
                frames = packet.decode()
                if frames:
                    rotation = int(round(frames[0].rotation)) % 360
                    break
                if count >= ROTATION_PACKETS:
                    break
        except (av.FFmpegError, OSError, ValueError):
            pass
    if rotation:
        return rotation
    tag = stream.metadata.get("rotate")
    try:
        return int(round(float(tag))) % 360 if tag else 0
    except ValueError:
        return 0


def _video_here(s: Any) -> VideoStreamInfo:
    cc = s.codec_context  # None where this libav has no decoder for the codec
    return VideoStreamInfo(
        index=s.index,
        codec=_codec_name(s),
        coded_width=int(cc.width or 0) if cc is not None else 0,
        coded_height=int(cc.height or 0) if cc is not None else 0,
        rotation=0,
        fps=_rate_of(s.average_rate) or _rate_of(s.base_rate),
        frames=int(s.frames) if s.frames and s.frames > 0 else None,
        duration_s=_stream_seconds(s),
    )


def _audio_here(s: Any) -> AudioStreamInfo:
    cc = s.codec_context
    return AudioStreamInfo(
        index=s.index,
        codec=_codec_name(s),
        sample_rate=(int(cc.sample_rate) or None) if cc is not None else None,
        channels=(int(cc.channels) or None) if cc is not None else None,
        duration_s=_stream_seconds(s),
    )


def _codec_name(s: Any) -> str:
    codec = s.codec_context.codec if s.codec_context is not None else None
    return codec.canonical_name if codec is not None else "?"


def _rate_of(rate: Any) -> float | None:
    return float(rate) if rate else None


def _stream_seconds(s: Any) -> float | None:
    if s.duration is None or s.time_base is None:
        return None
    return _positive(float(s.duration * s.time_base))


def media_info(raw: dict[str, Any]) -> MediaInfo:
    """Build a MediaInfo from ffprobe's parsed JSON (``-show_format -show_streams``)."""
    streams = raw.get("streams", [])
    video = next((_video(s) for s in streams if _is_real_video(s)), None)
    audio = next((_audio(s) for s in streams if s.get("codec_type") == "audio"), None)
    fmt = raw["format"]
    duration = _positive(fmt.get("duration"))
    if duration is None:  # some containers only know per-stream durations
        durations = [d for d in (video and video.duration_s, audio and audio.duration_s) if d]
        duration = max(durations, default=None)
    return MediaInfo(fmt.get("format_name", ""), duration, video, audio, len(streams))


def _is_real_video(stream: dict[str, Any]) -> bool:
    # mp3/m4a cover art is a one-picture "video" stream flagged attached_pic.
    attached = stream.get("disposition", {}).get("attached_pic", 0)
    return stream.get("codec_type") == "video" and not attached


def _video(s: dict[str, Any]) -> VideoStreamInfo:
    return VideoStreamInfo(
        index=int(s["index"]),
        codec=s.get("codec_name", "?"),
        coded_width=int(s.get("width") or 0),
        coded_height=int(s.get("height") or 0),
        rotation=_rotation(s),
        fps=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
        frames=int(s["nb_frames"]) if str(s.get("nb_frames", "")).isdigit() else None,
        duration_s=_positive(s.get("duration")),
    )


def _audio(s: dict[str, Any]) -> AudioStreamInfo:
    rate = s.get("sample_rate")
    return AudioStreamInfo(
        index=int(s["index"]),
        codec=s.get("codec_name", "?"),
        sample_rate=int(rate) if rate else None,
        channels=s.get("channels"),
        duration_s=_positive(s.get("duration")),
    )


def _rotation(s: dict[str, Any]) -> int:
    """Rotation from the display matrix (new ffmpeg) or the legacy ``rotate`` tag."""
    for side in s.get("side_data_list", []):
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = s.get("tags", {}).get("rotate")
    return int(round(float(tag))) % 360 if tag else 0


def _rate(text: str | None) -> float | None:
    try:
        rate = Fraction(text) if text else None
    except (ValueError, ZeroDivisionError):
        return None
    return float(rate) if rate else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
