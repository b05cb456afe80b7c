"""Extracting chosen video frames with ffmpeg: many seeks in one process.

A *run* is one seek plus the target times read after it. Loading ffmpeg's
libraries costs ~70 ms of CPU per process, more than decoding a 720p keyframe,
so a *batch* of runs goes to one ffmpeg process as one input per run (``-ss``
before each ``-i``), each branch filtered by ``select`` (only target frames go on),
``scale`` and ``format=rgb24``, then joined by ``concat`` onto one rawvideo pipe.
``showinfo@r<k>`` in branch ``k`` logs each passed frame's time and size, which
is how the bytes on the pipe are split into frames and matched to targets.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from ingest.decode.base import DecodeError
from ingest.ffmpeg_run import FFmpegError, run_capture

TAIL_SPANS_S = (3.0, 30.0, 300.0)  # how far back from the end to look for the last frame

_SHOWINFO = re.compile(rb"\[showinfo@r(\d+) @ [^\]]*\] n:\s*\d+\s+pts:\s*-?\d+\s+"
                       rb"pts_time:(-?[0-9.eE+-]+).*?\bs:(\d+)x(\d+)")


@dataclass(frozen=True, slots=True)
class Frame:
    time_s: float  # absolute seconds from the start of the file; NaN when unknown
    pixels: np.ndarray  # uint8 [H,W,3] RGB


@dataclass(frozen=True, slots=True)
class Run:
    """Seek to ``seek_s`` (negative: that far before the end), read ``span_s`` (None:
    to the end), pass the first frame at/after each of ``targets`` (seconds relative
    to the seek point; None passes every frame)."""

    seek_s: float
    span_s: float | None
    targets: tuple[float, ...] | None
    keyframes_only: bool = False  # decode keyframes only (every target is on one)


def extract_batch(path: Path, runs: list[Run], size: tuple[int, int], timeout_s: float,
                  max_frames: int | None = None) -> list[list[Frame]]:
    """The frames each run passed, in time order, from one ffmpeg process."""
    branches = [_branch(path, k, run, size) for k, run in enumerate(runs)]
    joined = branches[0] if len(branches) == 1 else ffmpeg.concat(*branches, n=len(branches),
                                                                  v=1, a=0)
    limit = {"frames:v": max_frames} if max_frames else {}
    out = joined.output("pipe:", format="rawvideo", fps_mode="passthrough", **limit)
    args = out.global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "info").compile()
    try:
        raw, err = run_capture(args, timeout_s)
    except FFmpegError as e:
        raise DecodeError(f"video decode failed: {e}") from None
    return split_frames(raw, err, runs)


def frame_times_from_end(path: Path, span_s: float, timeout_s: float) -> list[float]:
    """Times (relative to the ``-sseof`` point) of every frame in the last ``span_s``."""
    stream = ffmpeg.input(str(path), sseof=f"-{span_s:g}")["V:0"].filter("showinfo@r0")
    args = stream.output("-", format="null").global_args(
        "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info").compile()
    try:
        _, err = run_capture(args, timeout_s)
    except FFmpegError as e:
        raise DecodeError(f"video decode failed near the end: {e}") from None
    return [float(m[2]) for m in _SHOWINFO.finditer(err)]


def select_expression(rel_targets: tuple[float, ...]) -> str:
    """A frame passes if some target falls in (previous frame's time, this frame's time]."""
    terms = [f"gte(t,{r:.6f})*(lt(prev_pts*TB,{r:.6f})+isnan(prev_pts))" for r in rel_targets]
    return f"gt({'+'.join(terms)},0)"


def _branch(path: Path, k: int, run: Run, size: tuple[int, int]):
    seek = {"sseof": f"{run.seek_s:.6f}"} if run.seek_s < 0 else {"ss": f"{run.seek_s:.6f}"}
    span = {"t": f"{run.span_s:.6f}"} if run.span_s is not None else {}
    # -noaccurate_seek: start at the keyframe at/before the seek point and drop
    # nothing (earlier frames get negative times), so select sees every frame.
    skip = {"skip_frame": "nokey"} if run.keyframes_only else {}
    stream = ffmpeg.input(str(path), noaccurate_seek=None, threads=1, **skip, **seek,
                          **span)["V:0"]
    if run.targets is not None:
        stream = stream.filter("select", select_expression(run.targets))
    w, h = size
    return (stream.filter("scale", w, h, flags="bilinear").filter("format", "rgb24")
            .filter(f"showinfo@r{k}"))


def split_frames(raw: bytes, err: bytes, runs: list[Run]) -> list[list[Frame]]:
    """Cut the pipe into frames: branch by branch (concat order), each branch's
    frames in the order its showinfo logged them."""
    logged: dict[int, list[tuple[float, int, int]]] = defaultdict(list)
    for m in _SHOWINFO.finditer(err):
        logged[int(m[1])].append((float(m[2]), int(m[3]), int(m[4])))
    result, offset = [], 0
    for k, run in enumerate(runs):
        frames = []
        for rel, w, h in logged[k]:
            nbytes = w * h * 3
            if offset + nbytes > len(raw):
                break  # logged but cut off by -frames:v or an error: not on the pipe
            pixels = np.frombuffer(raw, np.uint8, nbytes, offset).reshape(h, w, 3)
            time_s = run.seek_s + rel if run.seek_s >= 0 else math.nan
            frames.append(Frame(time_s, pixels))
            offset += nbytes
        result.append(frames)
    return result
