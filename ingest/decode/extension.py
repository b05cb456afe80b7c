"""Files of a registered modality extension (``schemas.extension``) → model-ready views.

Training (``mediabind bind``) and ingest read samples through these same
functions, so a file becomes the same array in both.

* ``series`` files hold an N-channel time series: ``.npy`` [T,C] or [C,T]
  (the axis of length ``channels`` is the channel axis), ``.csv``/``.parquet``
  with one numeric column per channel (an optional ``t`` column is dropped).
  The recording is cut into windows of ``samples`` samples, the last one
  zero-padded: float32 [channels, samples] each.
* ``map`` files hold one 2-D plane: ``.npy`` [H,W] (or [1,H,W]/[H,W,1]), or a
  greyscale/16-bit/float PNG or TIFF (colour images are turned to grey).
  The map is resized (bilinear) to ``height`` × ``width``: float32 [H,W].

Non-finite values become 0 (a missing reading). A file whose every value is
invalid or that is constant throughout carries nothing to embed and is refused,
as are geometries that contradict the spec (a 5-channel file for an 8-channel
extension).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ingest.decode.base import DecodeError, DecodeJob
from ingest.decode.sensors import _load_npy, _open_image, _plane, _read_by_suffix
from schemas import Segment
from schemas.extension import ExtensionSpec, Geometry


def read_views(path: Path, spec: ExtensionSpec) -> list[np.ndarray]:
    """Every model view of one file: series windows in time order, or the one map."""
    if spec.layout == "series":
        return series_windows(read_series(path, spec.geometry.channels), spec.geometry)
    return [fit_map(read_map(path), spec.geometry)]


def decode_extension(job: DecodeJob, spec: ExtensionSpec, modality) -> Iterator[Segment]:
    """Segments of one file: one per series window, or one for a map."""
    views = read_views(job.path, spec)
    for index, view in enumerate(views):
        yield job.segment(modality, index, None, None, view, **_extent(spec, view))


def _extent(spec: ExtensionSpec, view: np.ndarray) -> dict[str, int]:
    if spec.layout == "map":
        return {"height": view.shape[0], "width": view.shape[1]}
    return {"channels": view.shape[0], "samples": view.shape[1]}


# --- series -------------------------------------------------------------------------------

def read_series(path: Path, channels: int) -> np.ndarray:
    """float64 [channels, T] of a series file, checked against the declared channels."""
    array = _read_by_suffix(SERIES_READERS, Path(path), "series")
    return _channels_first(np.asarray(array, dtype=np.float64), channels)


def series_windows(series: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
    """Windows of ``samples`` samples, the last zero-padded, float32 [C, samples] each."""
    clean = _valid(series, "series")
    total, size = clean.shape[1], geometry.samples
    windows = []
    for start in range(0, total, size):
        window = np.zeros((clean.shape[0], size), np.float32)
        piece = clean[:, start:start + size]
        window[:, :piece.shape[1]] = piece
        windows.append(window)
    return windows


def _channels_first(array: np.ndarray, channels: int) -> np.ndarray:
    if array.ndim == 1 and channels == 1:
        array = array[None, :]
    if array.ndim != 2 or channels not in array.shape:
        raise DecodeError(f"series has shape {list(array.shape)}; the extension expects "
                          f"{channels} channels ([T,{channels}] or [{channels},T])")
    if array.shape[0] == channels and array.shape[1] != channels:
        return array
    return array.T


def _series_table(frame) -> np.ndarray:
    keep = [c for c in frame.columns if str(c).strip().lower() not in ("t", "time", "time_s")]
    try:
        return frame[keep].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"series table has a non-numeric column: {exc}") from None


def _series_csv(path: Path) -> np.ndarray:
    import pandas as pd

    return _series_table(pd.read_csv(path))


def _series_parquet(path: Path) -> np.ndarray:
    import pandas as pd

    return _series_table(pd.read_parquet(path))


SERIES_READERS = {".npy": _load_npy, ".csv": _series_csv, ".parquet": _series_parquet}


# --- maps ----------------------------------------------------------------------------------

def read_map(path: Path) -> np.ndarray:
    """float64 [H,W] of a map file."""
    return np.asarray(_read_by_suffix(MAP_READERS, Path(path), "map"), dtype=np.float64)


def fit_map(plane: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The map resized (bilinear) to the geometry's height × width, float32."""
    clean = _valid(plane, "map").astype(np.float32)
    if clean.shape == (geometry.height, geometry.width):
        return clean
    resized = Image.fromarray(clean, mode="F").resize((geometry.width, geometry.height),
                                                      Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _map_image(path: Path) -> np.ndarray:
    with _open_image(path) as im:
        if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
            im = im.convert("L")
        return np.asarray(im)


def _map_npy(path: Path) -> np.ndarray:
    return _plane(_load_npy(path), "map")


MAP_READERS = {".npy": _map_npy, ".png": _map_image, ".tif": _map_image, ".tiff": _map_image}


# --- shared ----------------------------------------------------------------------------------

def _valid(values: np.ndarray, what: str) -> np.ndarray:
    """Non-finite → 0; refuse all-invalid or constant data (a dead or stuck sensor)."""
    if values.size == 0:
        raise DecodeError(f"{what} is empty")
    finite = np.isfinite(values) & (np.abs(values) <= np.finfo(np.float32).max)
    if not finite.any():
        raise DecodeError(f"{what} has no finite value: nothing to embed")
    clean = np.where(finite, values, 0.0)
    if np.all(clean == clean.flat[0]):
        raise DecodeError(f"{what} is constant ({clean.flat[0]!r} everywhere, a dead or stuck "
                          "sensor): nothing to embed")
    return clean
