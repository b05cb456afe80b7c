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

* Frames are addressed by index, ``ceil(t * fps)`` for the first frame at or after
  ``t`` (the stream's average rate): exact for constant-rate video, which NVDEC's
  codecs nearly always are; a variable-rate file gets the frame its index names.
* The downscale to the short side of 224 is torch's bilinear resize with
  antialias on the GPU, not swscale's bilinear filter: values differ slightly
  from the CPU backends (sizes are the same). ``tests/test_decode_video.py``
  bounds the difference on a GPU.
* Only H.264, HEVC and AV1 go to NVDEC (``CODECS``); other codecs, and every
  video on a machine without a usable NVDEC, take the CPU backend
  (``video.frame_backend``).

The keyframe index comes from PyAV's demuxer (no decode), as for the PyAV backend.
The frames come back to host memory, so they cross to the encoder like the CPU
backends' frames; what NVDEC saves is the CPU's decode work.
"""

from __future__ import annotations

import math
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ingest.decode import pyav_frames
from ingest.decode.base import DecodeError
from ingest.decode.frames import Frame, Run

CODECS = frozenset({"h264", "hevc", "av1"})  # what NVDEC decodes and we send it


@cache
def unavailable_reason() -> str | None:
    """None when NVDEC can decode here; else what is missing, in words."""
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


_opened = threading.local()  # this thread's last decoder: a video's batches reuse it


def _decoder(path: Path) -> Any:
    import PyNvVideoCodec as nvc

    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if getattr(_opened, "key", None) != key:
        _opened.decoder = None  # let the previous session go before opening another
        _opened.decoder = nvc.SimpleDecoder(str(path), gpu_id=0, use_device_memory=True,
                                            output_color_type=nvc.OutputColorType.RGB)
        _opened.key = key
    return _opened.decoder


def _rate(decoder: Any) -> tuple[float, int]:
    meta = decoder.get_stream_metadata()
    fps = float(meta.average_fps or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        raise DecodeError("NVDEC: the stream states no frame rate")
    return fps, len(decoder)


def _index_at(t: float, fps: float) -> int:
    """The first frame shown at or after ``t`` (a thousandth of a frame against rounding)."""
    return max(0, math.ceil(t * fps - 1e-3))


def extract_batch(path: Path, runs: list[Run], size: tuple[int, int], timeout_s: float,
                  max_frames: int | None = None, rotation: int = 0) -> list[list[Frame]]:
    """The frames each run passed, in time order, decoded on the GPU in one batch."""
    deadline = time.monotonic() + timeout_s
    decoder = _decoder(path)
    fps, count = _rate(decoder)
    wanted: list[list[int]] = []
    for run in runs:
        if run.targets is None:  # every frame of the span
            first = _index_at(max(run.seek_s, 0.0), fps)
            last = count - 1 if run.span_s is None else _index_at(run.seek_s + run.span_s, fps)
            indices = list(range(first, min(last, count - 1) + 1))
        else:
            indices = [_index_at(run.seek_s + t, fps) for t in run.targets]
        wanted.append(sorted({i for i in indices if i < count}))
    flat = sorted({i for indices in wanted for i in indices})
    if max_frames:
        flat = flat[:max_frames]
    pixels = dict(zip(flat, _to_host(decoder.get_batch_frames_by_index(flat), size, rotation),
                      strict=True)) if flat else {}
    if time.monotonic() > deadline:
        raise DecodeError("video decode timed out (MEDIABIND_FFMPEG_TIMEOUT_S)")
    return [[Frame(i / fps, pixels[i]) for i in indices if i in pixels] for indices in wanted]


def last_frame(path: Path, size: tuple[int, int], timeout_s: float, rotation: int = 0) -> Frame:
    decoder = _decoder(path)
    fps, count = _rate(decoder)
    if count <= 0:
        raise DecodeError("no decodable video frame found")
    frames = decoder.get_batch_frames_by_index([count - 1])
    if not frames:
        raise DecodeError("no decodable video frame found")
    return Frame((count - 1) / fps, _to_host(frames, size, rotation)[0])


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
