"""Video → vision clips (first and last frame of every window) plus the soundtrack's
audio windows.

Frames are decoded by a ``FrameBackend`` (end of this module): PyAV in this process
(``pyav_frames``, the default) or ffmpeg processes (``frames``); the runs below are
planned the same way for both, and the ffmpeg terms (``-ss``, ``select``, ``-skip_frame``)
describe what either does. With ``keyframe`` sampling (``SegmentPolicy.sampling``) each
target takes the keyframe nearest it instead, and only keyframes are decoded.

Only the frames the windows need are decoded, never the whole stream:

* Targets. For a window ``[s, e)`` ImageBind takes the first and the last frame
  (``UniformTemporalSubsample(2)``). We take the frames shown at ``s`` and at
  ``e`` (the first frame at or after each time): the last is one frame later
  than the reference's, and is shared with the next window, which halves the
  seeks and puts them where keyframes usually are (see ``frame_targets``).
* Runs. Targets are grouped into runs; each run is one ffmpeg call that seeks
  (``-ss`` before ``-i``, landing on the keyframe at or before its first target;
  see ``extract_frames``), reads only up to its last
  target (``-t`` on the input), and lets a ``select`` filter pass only the target
  frames to ``scale`` and the RGB pipe, so skipped frames are decoded but never
  converted or copied. A new run (a new seek) starts when a keyframe lies between
  two targets and they are more than ``MIN_SEEK_GAP_S`` apart: seeking is then
  cheaper than decoding through. Keyframe times come from the packet index
  (``ffprobe -show_entries packet``, demux only, no decode). With long GOPs and
  dense windows this degrades gracefully to one sequential pass, never worse
  than a full decode; with short GOPs most frames are never decoded.
* Targets that sit on a keyframe (fixed-GOP encodes put one on every window
  boundary) are read in one sequential pass with ``-skip_frame nokey``: only
  keyframes are decoded at all, and no process or seek per target.
* ``showinfo`` after ``select`` reports each passed frame's time and size, so
  frames are matched to targets by time and reshaped by the size ffmpeg
  actually produced.
* Scale on decode: the short side goes to 224 (bilinear, aspect kept, long side
  ``floor(long*224/short)`` as pytorchvideo's ``ShortSideScale``), and smaller
  videos are left alone. The model needs 224, so 4K frames never cross the pipe.
  The reference scales with torch bilinear without antialias; swscale's
  bilinear filter averages over the downscale footprint, so values differ
  slightly (resize differences only; sizes match, so preprocessing's own
  short-side resize is then the identity).
* Rotation: ffmpeg autorotates (display matrix / ``rotate`` tag); sizes are
  computed from the displayed width/height.
* A target past the last decodable frame (container durations often run past
  the video, e.g. a longer soundtrack) takes the last decodable frame; but frames
  missing more than ``TRUNCATION_SLACK_S`` before the end the video stream itself
  claims mean truncated data: the item is Rejected (after the windows made).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.decode import nvdec_frames, pyav_frames
from ingest.decode.audio import decode_probed_audio
from ingest.decode.base import DecodeError, DecodeJob, bounded_windows
from ingest.decode.frames import (
    TAIL_SPANS_S,
    Frame,
    Run,
    extract_batch,
    frame_times_from_end,
)
from ingest.ffmpeg_run import FFmpegError, run_capture
from ingest.probe import MediaInfo, VideoStreamInfo, probe_for
from schemas import Modality, Segment

TARGET_SHORT_SIDE = 224
MIN_SEEK_GAP_S = 1.0  # below this, decoding through is cheaper than a new process + seek
MAX_TARGETS_PER_RUN = 96  # bounds the select expression's length
MAX_RUNS_PER_BATCH = 32  # inputs (seeks) per ffmpeg process
MAX_TARGETS_PER_BATCH = 96  # frames held in memory per process (~26 MB at 224x398)
DEFAULT_FPS = 30.0  # when the container does not state a frame rate
TRUNCATION_SLACK_S = 1.0  # frames missing further inside the stream than this: truncated



def decode_video(job: DecodeJob) -> Iterator[Segment]:
    """Vision clips for every window, then the soundtrack's audio windows."""
    info = probe_or_fail(job)
    if info.video is None:  # e.g. an .mp4 holding only sound: treat it as audio
        yield from decode_probed_audio(job, info)
        return
    spans = windows_or_fail(job, info)
    yield from vision_segments(job, info.video, spans)
    if info.audio is not None:
        yield from decode_probed_audio(job, info, spans)


def probe_or_fail(job: DecodeJob) -> MediaInfo:
    """Probe the file; a ProbeError propagates (decode_item rejects at stage probe)."""
    return probe_for(job.path, job.settings)


def windows_or_fail(job: DecodeJob, info: MediaInfo) -> list[tuple[float, float]]:
    try:
        return bounded_windows(info.duration_s, job.policy, job.settings)
    except ValueError as e:
        raise DecodeError(f"{e} (the probe reports no usable duration)") from None


def vision_segments(job: DecodeJob, video: VideoStreamInfo,
                    spans: list[tuple[float, float]]) -> Iterator[Segment]:
    """One uint8 [2,H,W,3] clip per window, made run by run as the windows advance."""
    fps = video.fps or DEFAULT_FPS
    pairs = frame_targets(spans, fps)
    source = FrameSource(job, scaled_size(video.width, video.height), fps,
                         sorted({t for pair in pairs for t in pair}), video.duration_s,
                         frame_backend(job.settings.video_decoder, video.codec),
                         video.rotation, keyframes_only=job.policy.sampling == "keyframe")
    try:
        yield from _clips(job, video, spans, pairs, fps, source)
    except DecodeError as e:  # the run report names the decoder of every video, refused or not
        raise DecodeError(f"{e} (decoder {source.backend.name})") from None
    finally:
        source.close()


def _clips(job: DecodeJob, video: VideoStreamInfo, spans: list[tuple[float, float]],
           pairs: list[tuple[float, float]], fps: float, source: FrameSource
           ) -> Iterator[Segment]:
    for index, ((s, e), (first_t, last_t)) in enumerate(zip(spans, pairs, strict=True)):
        first, last = source.at(first_t), source.at(last_t)
        if not source.nearest and last.time_s > e + 1.5 / fps and first.time_s < e:
            last = first  # no frame at e (VFR gap): the one shown at e is the earlier one
        clip = np.stack([first.pixels, last.pixels])
        yield job.segment(Modality.VISION, index, s, e, clip, width=video.width,
                          height=video.height, decoder=source.backend.name)
        source.forget_before(first_t)


def frame_targets(spans: list[tuple[float, float]], fps: float) -> list[tuple[float, float]]:
    """(first, last) frame times per window, lowered by a quarter frame against rounding.

    A window's last frame is the one shown at its end, which is also the next
    window's first frame: N windows need N+1 frames, and the boundaries (multiples
    of the stride) are where encoders usually put keyframes, so a seek there
    decodes one frame instead of a whole GOP. The reference takes the frame
    1/fps earlier; only the final window (whose end is the end of the stream)
    does that here.
    """
    eps = 0.25 / fps
    ends = [e for _, e in spans[:-1]] + [max(spans[-1][0], spans[-1][1] - 1.0 / fps)]
    return [(max(s - eps, 0.0), max(e - eps, 0.0)) for (s, _), e in zip(spans, ends, strict=True)]


def scaled_size(width: int, height: int, short: int = TARGET_SHORT_SIDE) -> tuple[int, int]:
    """(w, h) with the short side at ``short`` (never upscaled), like ShortSideScale."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"video stream has no usable size ({width}x{height})")
    if min(width, height) <= short:
        return width, height
    if width <= height:
        return short, int(math.floor(height / width * short))
    return int(math.floor(width / height * short)), short


class FrameSource:
    """Frames at target times, extracted lazily batch by batch in time order."""

    def __init__(self, job: DecodeJob, size: tuple[int, int], fps: float,
                 targets: list[float], stream_end_s: float | None = None,
                 backend: FrameBackend | None = None, rotation: int = 0,
                 keyframes_only: bool = False) -> None:
        self.job, self.size, self.fps = job, size, fps
        self.backend = backend or frame_backend(job.settings.video_decoder)
        self.rotation = rotation  # the pyav backend turns frames upright itself
        self.stream_end_s = stream_end_s  # what the video stream claims, if anything
        self.slack = 0.5 / fps  # seek this far past a target: onto its frame, short of the next
        self.keyframes = self.backend.keyframe_times(job.path, self._timeout)  # (CPU demux)
        # The ``keyframe`` sampling: each target takes the keyframe nearest it, and only
        # keyframes are decoded. Without a keyframe index, the exact frames are taken.
        self.nearest = nearest_keyframes(targets, self.keyframes, 0.25 / fps) \
            if keyframes_only and self.keyframes else {}
        if self.nearest:
            targets = sorted(set(self.nearest.values()))
        on_key = [t for t in targets if _on_keyframe(t, self.keyframes, 2 * self.slack)]
        rest = sorted(set(targets) - set(on_key))
        self.batches = sorted(
            [(b, True) for b in batched([[t] for t in on_key], MAX_TARGETS_PER_BATCH)]
            + [(b, False) for b in batched(plan_runs(rest, self.keyframes, self.slack))],
            key=lambda batch: batch[0][0][0])
        self.next_batch = 0
        self.frames: dict[float, Frame] = {}
        self._tail: Frame | None = None

    def at(self, target: float) -> Frame:
        key = self.nearest.get(target, target)
        while key not in self.frames and self.next_batch < len(self.batches):
            self._extract(self.batches[self.next_batch])
            self.next_batch += 1
        if key not in self.frames:
            raise DecodeError(f"internal: no run planned for t={target:.3f}s")
        return self.frames[key]

    def forget_before(self, target: float) -> None:
        key = self.nearest.get(target, target)
        for t in [t for t in self.frames if t < key]:
            del self.frames[t]

    def _extract(self, batch: tuple[list[list[float]], bool]) -> None:
        groups, keyframes_only = batch
        if keyframes_only:  # one sequential keyframes-only pass: no seek per target
            groups = [[t for g in groups for t in g]]
        runs = [self._run(targets, keyframes_only) for targets in groups]
        got = self._decode("extract_batch", self.job.path, runs, self.size, self._timeout,
                           sum(len(t) for t in groups), self.rotation)
        for targets, frames in zip(groups, got, strict=True):
            for target in targets:
                found = next((f for f in frames if f.time_s >= target - 1e-5), None)
                self.frames[target] = found or self._after_gap(target)

    def _run(self, targets: list[float], keyframes_only: bool = False) -> Run:
        seek = targets[0] + self.slack
        return Run(seek, self._read_span(seek, targets[-1]), tuple(t - seek for t in targets),
                   keyframes_only)

    def _read_span(self, seek: float, last_target: float) -> float | None:
        """Input ``-t`` for a run: ffmpeg counts it from the keyframe decoding starts at."""
        i = np.searchsorted(self.keyframes, seek, side="right")
        if i == 0:
            return None  # no index: -frames:v alone ends the run
        return last_target - self.keyframes[i - 1] + max(3.0 / self.fps, 0.1)

    def _after_gap(self, target: float) -> Frame:
        """The first frame at/after ``target`` beyond the run's reach, else the last one."""
        seek = target + self.slack
        got = self._decode("extract_batch", self.job.path, [Run(seek, None, (target - seek,))],
                           self.size, self._timeout, 1, self.rotation)[0]
        if got:
            return got[0]
        if self.stream_end_s and target < self.stream_end_s - TRUNCATION_SLACK_S:
            raise DecodeError(f"no decodable frame at or after {target:.2f} s although the "
                              f"video stream claims {self.stream_end_s:.2f} s: truncated or "
                              "corrupt video data")
        return self.tail()

    def tail(self) -> Frame:
        """The last decodable frame, looking back from the end further until one appears."""
        if self._tail is None:
            self._tail = self._decode("last_frame", self.job.path, self.size, self._timeout,
                                      self.rotation)
        return self._tail

    def _decode(self, step: str, *args: Any) -> Any:
        """``step`` of the backend. NVDEC failing on a video (a profile or size this GPU
        does not decode, out of memory, a library error) is not the file's fault: the
        rest of the video is decoded on the CPU, which judges the file itself."""
        try:
            return getattr(self.backend, step)(*args)
        except Exception as exc:  # noqa: BLE001 - any NVDEC failure; CPU errors re-raise
            if self.backend is not NVDEC:
                raise
            logging.getLogger(__name__).warning(
                "NVDEC failed on %s (%s: %s); decoding it on the CPU", self.job.item.source_uri,
                type(exc).__name__, exc)
            self.close()
            self.backend = cpu_backend()
            return getattr(self.backend, step)(*args)

    def close(self) -> None:
        if self.backend is NVDEC:
            nvdec_frames.release()

    @property
    def _timeout(self) -> float:
        return self.job.settings.ffmpeg_timeout_s


def last_frame(path: Path, size: tuple[int, int], timeout_s: float, _rotation: int = 0) -> Frame:
    """The ffmpeg backend's last decodable frame (ffmpeg turns frames upright itself)."""
    for span in TAIL_SPANS_S:
        times = frame_times_from_end(path, span, timeout_s)
        if times:
            run = Run(-span, None, (times[-1] - 1e-4,))
            frames = extract_batch(path, [run], size, timeout_s)[0]
            if frames:
                return frames[-1]
    raise DecodeError("no decodable video frame found")


def nearest_keyframes(targets: list[float], keyframes: list[float], early: float
                      ) -> dict[float, float]:
    """target → the time to ask for its nearest keyframe (``early`` before it, against
    rounding); ties go to the earlier keyframe. Monotone: later targets never map earlier."""
    chosen = {}
    for t in targets:
        i = int(np.searchsorted(keyframes, t))
        around = keyframes[max(i - 1, 0) : i + 1]
        best = min(around, key=lambda k: (abs(k - t), k))
        chosen[t] = max(best - early, 0.0)
    return chosen


def _on_keyframe(target: float, keyframes: list[float], within: float) -> bool:
    i = np.searchsorted(keyframes, target, side="left")
    return i < len(keyframes) and keyframes[i] - target <= within


def batched(runs: list[list[float]], max_runs: int = MAX_RUNS_PER_BATCH
            ) -> list[list[list[float]]]:
    """Consecutive runs grouped into batches (one ffmpeg process each)."""
    batches: list[list[list[float]]] = []
    for run in runs:
        last = batches[-1] if batches else None
        if last and len(last) < max_runs and \
                sum(map(len, last)) + len(run) <= MAX_TARGETS_PER_BATCH:
            last.append(run)
        else:
            batches.append([run])
    return batches


def plan_runs(targets: list[float], keyframes: list[float], slack: float) -> list[list[float]]:
    """Group sorted target times into runs; a keyframe in a wide gap starts a new run.

    A run seeks to ``first target + slack``; decoding starts at the keyframe at or
    before that point, so a keyframe within ``slack`` after a target counts.
    """
    runs: list[list[float]] = []
    for t in targets:
        run = runs[-1] if runs else None
        if run and len(run) < MAX_TARGETS_PER_RUN and not _worth_seeking(run[-1], t + slack,
                                                                          keyframes):
            run.append(t)
        else:
            runs.append([t])
    return runs


def _worth_seeking(previous: float, target: float, keyframes: list[float]) -> bool:
    if target - previous <= MIN_SEEK_GAP_S:
        return False
    i = np.searchsorted(keyframes, target, side="right")  # keyframes sorted ascending
    return i > 0 and keyframes[i - 1] > previous


def keyframe_times(path: Path, timeout_s: float) -> list[float]:
    """Sorted keyframe times of the first video stream from the packet index (ffprobe),
    from the container's start time, as frame times and ``-ss`` count them."""
    args = ["ffprobe", "-v", "error", "-select_streams", "V:0", "-show_entries",
            "packet=pts_time,dts_time,flags:format=start_time", "-of", "csv=p=0", str(path)]
    try:
        out, _ = run_capture(args, timeout_s)
    except FFmpegError:
        return []  # no index: plan_runs then groups by gaps alone (still correct)
    times, start = [], 0.0
    for line in out.decode("ascii", "replace").splitlines():
        fields = [f for f in line.split(",") if f]
        if len(fields) == 1 and _is_number(fields[0]):  # the format's start_time
            start = float(fields[0])
            continue
        pts, dts, flags = (line.split(",") + ["", "", ""])[:3]
        stamp = pts if _is_number(pts) else dts
        if "K" in flags and _is_number(stamp):
            times.append(float(stamp))
    return sorted(t - start for t in times)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- the frame decoders -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameBackend:
    """Where chosen frames are decoded: an ffmpeg process per batch, or PyAV in-process.

    Both take the same runs and give the same frames (tests/test_decode_video.py
    compares them); ``benchmarks/decode.py`` measures both on the same files.
    """

    name: str
    extract_batch: Callable[..., list[list[Frame]]]
    last_frame: Callable[..., Frame]
    keyframe_times: Callable[[Path, float], list[float]]


def _ffmpeg_batch(path: Path, runs: list[Run], size: tuple[int, int], timeout_s: float,
                  max_frames: int | None = None, _rotation: int = 0) -> list[list[Frame]]:
    return extract_batch(path, runs, size, timeout_s, max_frames=max_frames)


FFMPEG = FrameBackend("ffmpeg", _ffmpeg_batch, last_frame, keyframe_times)
PYAV = FrameBackend("pyav", pyav_frames.extract_batch, pyav_frames.last_frame,
                    pyav_frames.keyframe_times)
NVDEC = FrameBackend("nvdec", nvdec_frames.extract_batch, nvdec_frames.last_frame,
                     nvdec_frames.keyframe_times)


def frame_backend(choice: str = "auto", codec: str | None = None) -> FrameBackend:
    """``MEDIABIND_VIDEO_DECODER`` for a video stream of ``codec``:

    * auto: NVDEC when this process sees a GPU with it and the codec is one it takes
      (H.264, HEVC, AV1), else PyAV when installed (no process per batch, the faster
      CPU backend in ``benchmarks/decode.py``), else ffmpeg;
    * nvdec: the same, but a run on the local executor refuses to start where NVDEC is
      not usable (``check_video_decoder``). A Ray decode actor on a node without it
      decodes on the CPU with a warning: refusing there would record every video as
      rejected for a fault of the node, not of the file;
    * pyav or ffmpeg: that CPU backend.

    The run report names the backend each video used (``ItemOutcome.decoder``).
    """
    if choice == "ffmpeg":
        return FFMPEG
    if choice == "pyav":
        check_video_decoder(choice)
        return PYAV
    if nvdec_frames.supports(codec) and nvdec_frames.available():
        return NVDEC
    if choice == "nvdec" and not nvdec_frames.available():
        _warn_no_nvdec(nvdec_frames.unavailable_reason())
    return cpu_backend()


def cpu_backend() -> FrameBackend:
    return PYAV if pyav_frames.available() else FFMPEG


def check_video_decoder(choice: str) -> None:
    """DecodeError for a decoder asked for by name that cannot run in this process,
    saying what is missing."""
    if choice == "nvdec" and not nvdec_frames.available():
        raise DecodeError(f"MEDIABIND_VIDEO_DECODER=nvdec, but {nvdec_frames.unavailable_reason()}"
                          "; set it to auto to decode on the CPU where there is no NVDEC")
    if choice == "pyav" and not pyav_frames.available():
        raise DecodeError("MEDIABIND_VIDEO_DECODER=pyav, but PyAV is not installed (pip install av)")


@functools.cache
def _warn_no_nvdec(reason: str | None) -> None:
    logging.getLogger(__name__).warning(
        "MEDIABIND_VIDEO_DECODER=nvdec, but %s: this process decodes video on the CPU", reason)
