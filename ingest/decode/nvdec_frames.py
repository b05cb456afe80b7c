"""Extracting chosen video frames on an NVIDIA GPU's video decoder (NVDEC), with
PyNvVideoCodec.

Why PyNvVideoCodec rather than torchcodec's CUDA decoder: it is one self-contained
wheel on PyPI (its own FFmpeg demuxer, NVIDIA's decoder bindings) whose frames
reach torch by DLPack, so it does not tie our torch pin to a torchcodec build,
and torchcodec's CUDA wheels are not on PyPI at all. It needs the NVIDIA driver's
video libraries at import time; without them (any machine without an NVIDIA
driver, a container started without the ``video`` capability) importing it
raises, and ``unavailable_reason`` says so.

The same contract as the other backends (``frames.py``, ``pyav_frames.py``): a
batch of ``Run``\\ s in, the frames each run passed out, uint8 [H,W,3] RGB at the
asked size, upright. Differences, documented as deviations:

* Frames are addressed by index. The frame times come from PyAV's demuxer (every
  video packet's presentation time, sorted, from the container's start, as the CPU
  backends count): a target takes the first frame at or after it, and the frame
  keeps that time, so variable-rate video and streams that start late are timed
  as on the CPU. The frames that exist are the packets that exist: a count from a
  header that runs past the data is never asked for.
* The downscale to the short side of 224 is torch's bilinear resize with
  antialias on the GPU, not swscale's bilinear filter: values differ slightly
  from the CPU backends (sizes are the same). ``tests/test_decode_video.py``
  bounds the difference on a GPU.
* Only H.264, HEVC and AV1 go to NVDEC (``CODECS``); other codecs, and every
  video on a machine without a usable NVDEC, take the CPU backend
  (``video.frame_backend``).

Any failure of NVDEC on a video (a profile or size this GPU does not decode, out of
memory, an error of the library) is not the file's fault: ``video.FrameSource``
decodes the rest of that video on the CPU and logs why.

The frames come back to host memory in chunks of ``CHUNK`` (so a batch never holds
96 4K frames on the GPU), and cross to the encoder like the CPU backends' frames;
what NVDEC saves is the CPU's decode work.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ingest.decode import pyav_frames
from ingest.decode.base import DecodeError
from ingest.decode.frames import Frame, Run

CODECS = frozenset({"h264", "hevc", "av1"})  # what NVDEC decodes and we send it


def unavailable_reason() -> str | None:
    """None when NVDEC can decode here; else what is missing, in words.

    A Ray task or actor that holds no GPU never uses it: Ray leaves every GPU visible
    to such a process, and its NVDEC session and CUDA context would sit on the
    encode actor's card outside Ray's accounting (see docs/operations.md)."""
    return _ray_reason() or _process_reason()


def _ray_reason() -> str | None:
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized() or ray._private.worker.global_worker.mode != ray.WORKER_MODE:
        return None  # not in a Ray worker (a driver, or no Ray)
    if not ray.get_gpu_ids():
        return "this Ray task or actor holds no GPU"
    return None


@cache
def _process_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to this process"
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return "PyNvVideoCodec is not installed (pip install 'mediabind[gpu]')"
    except Exception as e:  # noqa: BLE001 - it raises RuntimeError without the driver's libs
        return f"PyNvVideoCodec cannot load the NVIDIA video libraries ({str(e).splitlines()[0]})"
    return None


def available() -> bool:
    return unavailable_reason() is None


def supports(codec: str | None) -> bool:
    return (codec or "").lower() in CODECS


CHUNK = 8  # frames fetched from NVDEC and brought to host memory at once

_opened = threading.local()  # this thread's open video: its batches share one session


@dataclass
class _Video:
    key: tuple
    decoder: Any
    times: np.ndarray  # presentation times of its frames, in index order


def _video(path: Path, timeout_s: float) -> _Video:
    import PyNvVideoCodec as nvc

    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    video = getattr(_opened, "video", None)
    if video is None or video.key != key:
        release()
        times = np.asarray(pyav_frames.packet_times(path, timeout_s), dtype=np.float64)
        decoder = nvc.SimpleDecoder(str(path), gpu_id=0, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGB)
        video = _Video(key, decoder, times[: len(decoder)])
        _opened.video = video
    return video


def release() -> None:
    """Close this thread's NVDEC session (its GPU surfaces and its open file)."""
    _opened.video = None


def _index_at(times: np.ndarray, t: float) -> int:
    """The first frame shown at or after ``t`` (a microsecond early, against rounding)."""
    return int(np.searchsorted(times, t - 1e-6, side="left"))


def extract_batch(path: Path, runs: list[Run], size: tuple[int, int], timeout_s: float,
                  max_frames: int | None = None, rotation: int = 0) -> list[list[Frame]]:
    """The frames each run passed, in time order, decoded on the GPU."""
    deadline = time.monotonic() + timeout_s
    video = _video(path, timeout_s)
    times, count = video.times, len(video.times)
    wanted: list[list[int]] = []
    for run in runs:
        if run.seek_s < 0:
            raise DecodeError("internal: the NVDEC backend takes no seek from the end")
        if run.targets is None:  # every frame of the span
            end = math.inf if run.span_s is None else run.seek_s + run.span_s
            indices = [i for i in range(_index_at(times, run.seek_s), count) if times[i] <= end]
        else:
            indices = [_index_at(times, run.seek_s + t) for t in run.targets]
        wanted.append(sorted({i for i in indices if i < count}))
    flat = sorted({i for indices in wanted for i in indices})
    if max_frames:
        flat = flat[:max_frames]
    pixels: dict[int, np.ndarray] = {}
    for at in range(0, len(flat), CHUNK):
        chunk = flat[at : at + CHUNK]
        frames = video.decoder.get_batch_frames_by_index(chunk)
        if len(frames) != len(chunk):
            raise DecodeError(f"NVDEC gave {len(frames)} of {len(chunk)} frames")
        pixels.update(zip(chunk, _to_host(frames, size, rotation), strict=True))
        if time.monotonic() > deadline:
            raise DecodeError("video decode timed out (MEDIABIND_FFMPEG_TIMEOUT_S)")
    return [[Frame(float(times[i]), pixels[i]) for i in indices if i in pixels]
            for indices in wanted]


def last_frame(path: Path, size: tuple[int, int], timeout_s: float, rotation: int = 0) -> Frame:
    video = _video(path, timeout_s)
    if len(video.times) == 0:
        raise DecodeError("no decodable video frame found")
    last = len(video.times) - 1
    frames = video.decoder.get_batch_frames_by_index([last])
    if len(frames) != 1:
        raise DecodeError("no decodable video frame found")
    return Frame(float(video.times[last]), _to_host(frames, size, rotation)[0])


def keyframe_times(path: Path, timeout_s: float) -> list[float]:
    return pyav_frames.keyframe_times(path, timeout_s)


def _to_host(frames: list[Any], size: tuple[int, int], rotation: int) -> list[np.ndarray]:
    """Decoded RGB frames (device memory) → uint8 [h,w,3] at the displayed ``size``,
    upright, in host memory. Scaled in coded orientation, rotated after, as the CPU
    backends do."""
    import torch
    import torch.nn.functional as F

    width, height = size
    turns = (rotation // 90) % 4
    if turns % 2:
        width, height = height, width
    out = []
    for frame in frames:
        rgb = torch.from_dlpack(frame)  # [H, W, 3] uint8 on the GPU
        if rgb.shape[0] != height or rgb.shape[1] != width:
            scaled = F.interpolate(rgb.permute(2, 0, 1)[None].float(), size=(height, width),
                                   mode="bilinear", align_corners=False, antialias=True)
            rgb = scaled[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
        if turns:
            rgb = torch.rot90(rgb, turns, dims=(0, 1))
        out.append(rgb.contiguous().cpu().numpy())
    return out
