"""What a media file holds, from ffprobe's JSON: duration, the first real video stream
(cover art is not video), the first audio stream.

``probe(path)`` raises :class:`ProbeError` (with ffprobe's own message) for
anything ffprobe cannot read; decoders turn that into a ``Rejected``.

One ffprobe per file: the classifier (``ingest.kinds``, for ambiguous
containers), the duration of the item (``pipeline.probe_duration``) and the
decoders all ask about the same spooled file in the same process (a decode
thread, a Ray decode actor), so the answer is kept, keyed by the file as it is
on disk (path, inode, size, mtime), and the later askers get it without a
launch (about 70 ms each). The keyframe index of a video is a different
question (a demux pass over its packets) and has its own ffprobe.
"""

from __future__ import annotations

import json
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
    """ffprobe could not read the file; the message includes its stderr."""


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
    """A file as ffprobe sees it; ``duration_s`` is None when nobody knows it."""

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
_kept: OrderedDict[tuple[str, int, int, int], MediaInfo] = OrderedDict()
_kept_lock = threading.Lock()
launches: Counter[str] = Counter()  # ffprobe launches of ``probe``, per file (tests read it)


def probe(path: Path, timeout_s: float = 30) -> MediaInfo:
    """ffprobe ``path`` (format and streams, JSON) into a :class:`MediaInfo`, once per
    file: a file unchanged since it was probed gets the kept answer."""
    key = _identity(path)
    with _kept_lock:
        if key is not None and key in _kept:
            _kept.move_to_end(key)
            return _kept[key]
    info = _run_probe(path, timeout_s)
    if key is not None:
        with _kept_lock:
            _kept[key] = info
            while len(_kept) > KEPT_PROBES:
                _kept.popitem(last=False)
    return info


def _identity(path: Path) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # ffprobe says what is wrong with it
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def _run_probe(path: Path, timeout_s: float) -> MediaInfo:
    with _kept_lock:
        launches[str(path)] += 1
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
