"""Depth, thermal and IMU files → model-ready float32 arrays.

Depth → float32 [H,W] disparity (1/metres):
  * 16-bit PNG/TIFF (and integer ``.npy``) hold millimetres (Kinect, RealSense,
    SUN RGB-D, NYU exports); float TIFF, float ``.npy`` and ``.exr`` hold metres.
  * Following Omnivore's recipe, depth is clipped to [0.01, 50] m before
    ``disparity = 1 / depth``; pixels with depth 0, negative or non-finite (no
    measurement) get disparity 0. Omnivore multiplies by baseline × focal length;
    archives rarely carry intrinsics, so we use 1/m (the scale is left to
    preprocessing's normalisation). 8-bit depth images have no defined unit and
    are Rejected.
  * ``.exr`` needs the optional ``openexr`` package (``pip install mediabind[exr]``);
    without it the file is Rejected with that hint.
Thermal → float32 [H,W] in [0,1]:
  * 8-bit greyscale: value/255. Colour-mapped (RGB/palette) images are turned to
    greyscale first (PIL ``convert("L")``, as community loaders do).
  * 16-bit and float (radiometric counts, temperatures) have no fixed range:
    min-max stretched per image, like a camera's automatic gain; the model was
    trained on 8-bit AGC images (LLVIP). An image with no finite value, or one
    value everywhere (a dead or saturated sensor), is Rejected.
Depth with no valid pixel at all is Rejected, as is an IMU recording that is
constant on every channel (a stuck sensor).
IMU → float32 [6,2000] per 5-s window (``IMU_WINDOW_S``, ImageBind's IMU clip; the
policy's overlap ratio applies):
  * Channels: accelerometer x,y,z then gyroscope x,y,z (Ego4D order).
  * ``.csv``/``.parquet``: columns ``ax,ay,az,gx,gy,gz`` (any case), plus an
    optional ``t`` column of timestamps in seconds. ``.npy``: an array [N,6] or
    [6,N] (a 6x6 array is read as [N,6]).
  * Without ``t`` the samples are taken to be evenly spaced at
    ``DEFAULT_IMU_RATE_HZ`` (400 Hz: ImageBind's 2000 samples per 5-s clip).
  * Each window is linearly resampled to 2000 points; a recording shorter than
    one window is sampled at the same rate and zero-padded at the end. Rows with
    a non-finite value are dropped; timestamps are sorted and deduplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ingest.decode.base import DecodeError, DecodeJob, bounded_windows, unit_stretch
from schemas import Modality, Segment, SegmentPolicy

MIN_DEPTH_M, MAX_DEPTH_M = 0.01, 50.0
IMU_SAMPLES = 2000
IMU_COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")
DEFAULT_IMU_RATE_HZ = 400.0
IMU_WINDOW_S = 5.0  # ImageBind's IMU clip: 2000 samples over 5 s (paper, Ego4D)


# --- depth -------------------------------------------------------------------------

def decode_depth(job: DecodeJob) -> Iterator[Segment]:
    metres = _read_by_suffix(DEPTH_READERS, job.path, "depth")
    disparity = depth_to_disparity(metres)
    if not np.any(disparity > 0):  # a blank map would embed as "nothing", wrongly near
        raise DecodeError("depth map has no valid measurement: every pixel is 0, "
                          "negative or not finite")
    yield job.segment(Modality.DEPTH, 0, None, None, disparity,
                      width=disparity.shape[1], height=disparity.shape[0])


def depth_to_disparity(metres: np.ndarray) -> np.ndarray:
    """1/depth with depth clipped to [0.01, 50] m; 0 where there is no measurement."""
    depth = np.asarray(metres, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    clipped = np.clip(np.where(valid, depth, 1.0), MIN_DEPTH_M, MAX_DEPTH_M)
    return np.where(valid, 1.0 / clipped, 0.0).astype(np.float32)


def _depth_image(path: Path) -> np.ndarray:
    with _open_image(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im, dtype=np.float64) / 1000.0  # millimetres
        if im.mode == "F":
            return np.asarray(im, dtype=np.float64)  # metres
    raise DecodeError(f"depth image mode {im.mode!r} has no defined unit; expected a "
                      "16-bit image in millimetres or a float image in metres")


def _depth_npy(path: Path) -> np.ndarray:
    array = _plane(_load_npy(path), "depth")
    return array / 1000.0 if np.issubdtype(array.dtype, np.integer) else array


def _depth_exr(path: Path) -> np.ndarray:
    try:
        import OpenEXR
    except ImportError:
        raise DecodeError("reading .exr depth needs the optional 'openexr' package "
                          "(pip install 'mediabind[exr]')") from None
    with OpenEXR.File(str(path)) as exr:
        channels = exr.channels()
        name = next((n for n in ("Z", "Y", "R", "depth") if n in channels), None)
        if name is None:
            raise DecodeError(f"EXR has no depth channel (Z/Y/R): {sorted(channels)}")
        return _plane(np.asarray(channels[name].pixels, dtype=np.float64), "depth")


DEPTH_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    ".png": _depth_image, ".tif": _depth_image, ".tiff": _depth_image,
    ".npy": _depth_npy, ".exr": _depth_exr,
}


# --- thermal -----------------------------------------------------------------------

def decode_thermal(job: DecodeJob) -> Iterator[Segment]:
    values = _read_by_suffix(THERMAL_READERS, job.path, "thermal")
    yield job.segment(Modality.THERMAL, 0, None, None, values,
                      width=values.shape[1], height=values.shape[0])


def thermal_unit_range(values: np.ndarray) -> np.ndarray:
    """uint8 → /255; anything else min-max stretched to [0,1]."""
    if values.dtype == np.uint8:
        return (values / 255.0).astype(np.float32)
    return unit_stretch(values).astype(np.float32)


def _thermal_image(path: Path) -> np.ndarray:
    with _open_image(path) as im:
        if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
            im = im.convert("L")
        return thermal_unit_range(_with_contrast(np.asarray(im)))


def _thermal_npy(path: Path) -> np.ndarray:
    return thermal_unit_range(_with_contrast(_plane(_load_npy(path), "thermal")))


def _with_contrast(values: np.ndarray) -> np.ndarray:
    """Refuse a frame with nothing to embed: no finite value, or one value everywhere (a
    dead, saturated or lens-capped sensor), which would become a blank image."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        raise DecodeError("thermal image has no finite value")
    if finite.min() == finite.max():
        raise DecodeError(f"thermal image is constant ({finite.flat[0].item()!r} everywhere): "
                          "no contrast to embed")
    return values


THERMAL_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    ".png": _thermal_image, ".tif": _thermal_image, ".tiff": _thermal_image,
    ".jpg": _thermal_image, ".jpeg": _thermal_image, ".bmp": _thermal_image,
    ".npy": _thermal_npy,
}


# --- IMU -----------------------------------------------------------------------------

def decode_imu(job: DecodeJob) -> Iterator[Segment]:
    times, samples = _read_by_suffix(IMU_READERS, job.path, "IMU")
    times, samples = clean_imu(times, samples)
    policy = imu_policy(job.policy)
    spans = bounded_windows(float(times[-1] - times[0]), policy, job.settings)
    for index, (s, e) in enumerate(spans):
        window = resample_window(times - times[0], samples, s, e, policy.segment_s)
        yield job.segment(Modality.IMU, index, s, e, window)


def imu_policy(policy: SegmentPolicy) -> SegmentPolicy:
    """IMU windows last ImageBind's IMU clip (5 s for 2000 samples), not the 2-s A/V unit.

    The stride keeps the policy's overlap ratio, so a policy with 50% overlap
    gives 50%-overlapping IMU windows too. The policy id (and so point ids)
    stays the caller's: this is a fixed rule of the decoder, not a setting.
    """
    ratio = policy.stride_s / policy.segment_s
    return replace(policy, segment_s=IMU_WINDOW_S, stride_s=IMU_WINDOW_S * ratio)


def clean_imu(times: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop non-finite rows, sort by time, drop repeated timestamps; [N], [N,6].

    Values beyond float32's range count as non-finite: the window is float32, and
    such a value (corrupt data) would become infinity there.
    """
    keep = np.isfinite(times) & (np.abs(samples) <= np.finfo(np.float32).max).all(axis=1)
    times, samples = times[keep], samples[keep]
    order = np.argsort(times, kind="stable")
    times, first = np.unique(times[order], return_index=True)
    samples = samples[order][first]
    if len(times) < 2:
        raise DecodeError(f"IMU recording has {len(times)} usable samples; need at least 2")
    if np.all(samples == samples[0]):
        raise DecodeError("IMU recording is constant on every channel (a stuck or "
                          "disconnected sensor): nothing to embed")
    return times, samples


def resample_window(times: np.ndarray, samples: np.ndarray, start_s: float, end_s: float,
                    segment_s: float) -> np.ndarray:
    """[6,2000]: 2000 points per ``segment_s``; a shorter window is zero-padded."""
    step = segment_s / IMU_SAMPLES
    count = min(IMU_SAMPLES, max(1, int(np.ceil((end_s - start_s) / step - 1e-9))))
    grid = start_s + step * np.arange(count)
    out = np.zeros((6, IMU_SAMPLES), np.float32)
    for channel in range(6):
        out[channel, :count] = np.interp(grid, times, samples[:, channel])
    return out


def _imu_table(frame) -> tuple[np.ndarray, np.ndarray]:
    columns = {str(c).strip().lower(): c for c in frame.columns}
    missing = [c for c in IMU_COLUMNS if c not in columns]
    if missing:
        raise DecodeError(f"IMU table lacks columns {missing}; expected "
                          f"{','.join(IMU_COLUMNS)} and optionally t (seconds)")
    samples = frame[[columns[c] for c in IMU_COLUMNS]].to_numpy(dtype=np.float64)
    if "t" in columns:
        return frame[columns["t"]].to_numpy(dtype=np.float64), samples
    return np.arange(len(samples)) / DEFAULT_IMU_RATE_HZ, samples


def _imu_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    return _imu_table(pd.read_csv(path))


def _imu_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    return _imu_table(pd.read_parquet(path))


def _imu_npy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    array = _load_npy(path).astype(np.float64)
    if array.ndim == 2 and array.shape[1] != 6 and array.shape[0] == 6:
        array = array.T
    if array.ndim != 2 or array.shape[1] != 6:
        raise DecodeError(f"IMU array has shape {array.shape}; expected [N,6] or [6,N]")
    return np.arange(len(array)) / DEFAULT_IMU_RATE_HZ, array


IMU_READERS: dict[str, Callable[[Path], tuple[np.ndarray, np.ndarray]]] = {
    ".csv": _imu_csv, ".parquet": _imu_parquet, ".npy": _imu_npy,
}


# --- shared ----------------------------------------------------------------------------

def _read_by_suffix(readers: dict, path: Path, what: str):
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DecodeError(f"no {what} reader for {path.suffix or 'files without suffix'!r}; "
                          f"supported: {', '.join(sorted(readers))}")
    try:
        return reader(path)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt data of any kind → a readable reason
        raise DecodeError(f"{what} decode failed: {type(e).__name__}: {e}") from None


def _open_image(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError as e:
        raise DecodeError(f"not an image PIL can read: {e}") from None
    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112) else im


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)  # never unpickle archive contents


def _plane(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise DecodeError(f"{what} array has shape {array.shape}; expected [H,W]")
    return array
