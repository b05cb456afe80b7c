"""Extracting chosen video frames in this process with PyAV: one open container per batch.

The same contract as the ffmpeg backend in ``frames.py`` (a batch of ``Run``\\ s in,
the frames each run passed out), without a process per batch. Starting an ffmpeg
or ffprobe process costs about 0.1 CPU-s here (``benchmarks/decode.py`` prints
both backends), more than decoding a few 720p keyframes, and a video needs
several (the keyframe index, each batch of seeks, the last frame). PyAV links
the libraries once per process.

Semantics kept from the ffmpeg backend:

* A run seeks to the keyframe at or before ``seek_s`` (``-noaccurate_seek``) and
  passes the first frame at or after each target, judged against the previous
  decoded frame as ffmpeg's ``select`` does; ``keyframes_only`` sets the decoder's
  ``skip_frame`` to non-key (``-skip_frame nokey``).
* Times are seconds from the container's start time, as ffmpeg's ``-ss`` counts.
* Frames are scaled by swscale's bilinear filter to the asked size and turned
  upright from the display matrix (ffmpeg's autorotate): scaled in coded
  orientation, then rotated.
* A packet the decoder refuses is skipped, as the ffmpeg command line does;
  truncation is judged by the caller from the frames that did come.

A batch is bounded by ``timeout_s`` like an ffmpeg process is: the deadline is
checked between packets (a single libav call cannot be interrupted in-process;
a stream that never ends is stopped at the next packet). In-process also means
that a crash inside libav takes the worker with it, where an ffmpeg process
would have died alone; ``MEDIABIND_VIDEO_DECODER=ffmpeg`` keeps that isolation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ingest.decode.base import DecodeError
from ingest.decode.frames import TAIL_SPANS_S, Frame, Run

try:
    import av
except ImportError:  # the ffmpeg backend stays usable without PyAV
    av = None

AV_TIME_BASE = 1_000_000


def available() -> bool:
    return av is not None


def extract_batch(path: Path, runs: list[Run], size: tuple[int, int], timeout_s: float,
                  max_frames: int | None = None, rotation: int = 0) -> list[list[Frame]]:
    """The frames each run passed, in time order, from one open container."""
    deadline = time.monotonic() + timeout_s
    left = max_frames if max_frames else math.inf
    result: list[list[Frame]] = []
    with _opened(path) as (container, stream, start):
        for run in runs:
            frames = [] if left <= 0 else list(_run(container, stream, start, run, size,
                                                    rotation, deadline, left))
            left -= len(frames)
            result.append(frames)
    return result


def last_frame(path: Path, size: tuple[int, int], timeout_s: float, rotation: int = 0) -> Frame:
    """The last decodable frame: decode from ever further before the end until one comes."""
    deadline = time.monotonic() + timeout_s
    with _opened(path) as (container, stream, start):
        end = container.duration / AV_TIME_BASE if container.duration else None
        for span in TAIL_SPANS_S:
            seek = max((end or 0.0) - span, 0.0)
            last = None
            for _t, frame in _decoded(container, stream, start, seek, False, deadline):
                last = frame
            if last is not None:
                return Frame(math.nan, _rgb(last, size, rotation))
            if seek == 0.0:
                break
    raise DecodeError("no decodable video frame found")


def keyframe_times(path: Path, timeout_s: float) -> list[float]:
    """Sorted keyframe times of the first video stream, from the packets (demux only)."""
    try:
        return packet_times(path, timeout_s, keyframes=True)
    except DecodeError:
        return []  # no index: runs are then grouped by gaps alone (still correct)


def packet_times(path: Path, timeout_s: float, keyframes: bool = False) -> list[float]:
    """Sorted presentation times of the first video stream's packets (of its keyframes
    only, with ``keyframes``), from the container's start; demux only, no decode."""
    deadline = time.monotonic() + timeout_s
    times = []
    with _opened(path) as (container, stream, start):
        for packet in container.demux(stream):
            _check(deadline)
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None and packet.size and (packet.is_keyframe or not keyframes):
                times.append(float(stamp * stream.time_base) - start)
    return sorted(times)


# --- internals --------------------------------------------------------------------------


class _opened:
    """(container, first video stream, start time in s); libav errors become DecodeError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.container = None

    def __enter__(self):
        if av is None:
            raise DecodeError("video decoder pyav is not installed (pip install av)")
        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except av.FFmpegError as e:
            raise DecodeError(f"video decode failed: {e}") from None
        streams = self.container.streams.video
        if not streams:
            self.container.close()
            raise DecodeError("no video stream to decode")
        stream = streams[0]
        if stream.codec_context is None:
            self.container.close()
            raise DecodeError(f"no decoder for the video codec {stream.codec_tag or '?'}")
        stream.codec_context.thread_count = 1  # decode workers are the parallelism
        start = self.container.start_time / AV_TIME_BASE if self.container.start_time else 0.0
        return self.container, stream, start

    def __exit__(self, kind, error, trace) -> bool:
        self.container.close()
        if error is not None and av is not None and isinstance(error, av.FFmpegError):
            raise DecodeError(f"video decode failed: {error}") from None
        return False


def _run(container, stream, start: float, run: Run, size: tuple[int, int], rotation: int,
         deadline: float, limit: float) -> Iterator[Frame]:
    if run.seek_s >= 0:
        position, known = run.seek_s, True
    else:  # that far before the end (ffmpeg's -sseof): times are not reported
        end = container.duration / AV_TIME_BASE if container.duration else 0.0
        position, known = max(end + run.seek_s, 0.0), False
    pending = None if run.targets is None else sorted(position + r for r in run.targets)
    first_key: float | None = None
    previous: float | None = None
    passed = 0
    for t, frame in _decoded(container, stream, start, position, run.keyframes_only, deadline):
        first_key = t if first_key is None else first_key
        if run.span_s is not None and t > first_key + run.span_s:
            return
        hit = pending is None or _passes(pending, previous, t)
        previous = t
        if hit:
            yield Frame(t if known else math.nan, _rgb(frame, size, rotation))
            passed += 1
            if passed >= limit or pending == []:
                return


def _passes(pending: list[float], previous: float | None, t: float) -> bool:
    """ffmpeg's select: some target lies in (previous frame's time, this frame's time]."""
    due = [r for r in pending if t >= r - 1e-9 and (previous is None or previous < r)]
    for r in due:
        pending.remove(r)
    # Targets already behind both frames can never pass: drop them, as select would.
    pending[:] = [r for r in pending if r > t]
    return bool(due)


def _decoded(container, stream, start: float, position: float, keyframes_only: bool,
             deadline: float) -> Iterator[tuple[float, object]]:
    """(time, frame) from the keyframe at or before ``position`` to the end, in order."""
    context = stream.codec_context
    context.skip_frame = "NONKEY" if keyframes_only else "DEFAULT"
    target = int(round((position + start) / stream.time_base))
    try:
        container.seek(max(target, 0), stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        container.seek(0, stream=stream)  # unseekable: read from the start
    for _packet, frames in decode_packets(container, stream, lambda: _check(deadline)):
        for frame in frames or ():  # a damaged packet: skipped, as ffmpeg's command line does
            stamp = frame.time if frame.time is not None else _dts_time(frame, stream)
            if stamp is not None:
                yield stamp - start, frame


def decode_packets(container, stream, check: Callable[[], None]
                   ) -> Iterator[tuple[object, list | None]]:
    """(packet, its frames) of ``stream`` from where the container stands, ``None`` for
    frames where the decoder refused the packet; ``check`` runs before each packet (the
    time limit). Ends where the container can be read no further, as ffmpeg's command
    line does: what came is what there is. Audio decodes through it too."""
    packets = container.demux(stream)
    while True:
        check()
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            return
        try:
            frames = packet.decode()  # the last, empty packet flushes the decoder
        except av.FFmpegError:
            frames = None
        yield packet, frames


def _dts_time(frame, stream) -> float | None:
    """A frame without a pts (some AVI and raw streams) is timed by its dts, as ffmpeg's
    best-effort timestamp does."""
    return float(frame.dts * stream.time_base) if frame.dts is not None else None


def _rgb(frame, size: tuple[int, int], rotation: int) -> np.ndarray:
    """uint8 [h,w,3] RGB at the displayed ``size`` (w, h), upright."""
    width, height = size
    turns = (rotation // 90) % 4
    if turns % 2:
        width, height = height, width  # scale in coded orientation, rotate after
    # One thread: the decode workers are the parallelism, as for the decoder.
    pixels = frame.to_ndarray(width=width, height=height, format="rgb24",
                              interpolation="BILINEAR", threads=1)
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise DecodeError("video decode timed out (MEDIABIND_FFMPEG_TIMEOUT_S)")
