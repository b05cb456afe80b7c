"""Frozen targets: the base model's vectors of the paired files, computed once and cached.

Files are read and decoded by ingestion's own route (``read_local_file``, ``decode_events``)
and encoded by the frozen base model (``Encoder``). A video paired at ``time_s``
gives the vector of the window holding that moment; without a time, or for an
image, the file's vectors are averaged (the file-level point). The cache is a
``.npy`` in the training run's folder, keyed by the model and each file's path,
size, mtime and time: training epochs and a resumed run read it back, and a
changed file changes the key. Nothing is written into any collection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embed_workers.pipeline import decode_events
from ingest.sources import NotOneMediaFile, read_local_file
from schemas import Modality, Rejected, Segment, Settings
from schemas.extension import ExtensionError

CHUNK_FILES = 64  # files decoded per model call, to bound memory on big images
# (path, time_s or None)
FileRef = tuple[Path, float | None]


def cached_targets(refs: Sequence[FileRef], modality: Modality, encoder, settings: Settings,
                   cache_dir: Path, progress: Callable[[str], None] | None = None) -> np.ndarray:
    """float32 [N, dim] unit vectors for ``refs``, from the cache when its key matches."""
    key = cache_key(refs, modality, encoder.model_id)
    path = Path(cache_dir) / f"targets-{modality.value}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    vectors = encode_files(refs, modality, encoder, settings, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(path)  # a killed run never leaves a half-written cache behind
    return vectors


def cache_key(refs: Sequence[FileRef], modality: Modality, model_id: str) -> str:
    """Changes with the model, the modality, and any file's path, size, mtime or time."""
    rows = [(str(p), p.stat().st_size, p.stat().st_mtime_ns, t) for p, t in refs]
    blob = json.dumps([model_id, modality.value, rows])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_files(refs: Sequence[FileRef], modality: Modality, encoder, settings: Settings,
                 progress: Callable[[str], None] | None = None) -> np.ndarray:
    out = np.empty((len(refs), encoder.dim), np.float32)
    for start in range(0, len(refs), CHUNK_FILES):
        chunk = refs[start:start + CHUNK_FILES]
        segments = [file_segments(path, time_s, modality, settings) for path, time_s in chunk]
        vectors = encoder.encode_segments([s for group in segments for s in group])
        out[start:start + len(chunk)] = _per_file(vectors, [len(g) for g in segments])
        if progress:
            progress(f"{modality.value} targets: {start + len(chunk)}/{len(refs)} files")
    return out


def _per_file(vectors: np.ndarray, counts: list[int]) -> np.ndarray:
    rows, start = [], 0
    for count in counts:
        mean = vectors[start:start + count].mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
        start += count
    return np.stack(rows)


def file_segments(path: Path, time_s: float | None, modality: Modality,
                  settings: Settings) -> list[Segment]:
    """The file's segments of ``modality`` (only the one at ``time_s`` when given), by
    ingestion's own route (``read_local_file``, ``decode_events``)."""
    segments = []
    try:
        with read_local_file(path, settings) as entry:
            for out in decode_events(entry.item, entry.path, settings.policy, settings):
                if isinstance(out, Rejected):
                    raise ExtensionError(f"{path}: cannot be decoded as {modality.value}: "
                                         f"{out.reason}")
                if isinstance(out, Segment) and out.modality == modality:
                    segments.append(out)
    except NotOneMediaFile as exc:
        raise ExtensionError(f"{path}: {exc}") from None
    if not segments:
        raise ExtensionError(f"{path}: gave no {modality.value} segment")
    return segments if time_s is None else [_at(segments, time_s, path)]


def _at(segments: list[Segment], time_s: float, path: Path) -> Segment:
    timed = [s for s in segments if s.start_s is not None]
    if not timed:
        return segments[0]  # an image: one moment whatever the time
    holding = [s for s in timed if s.start_s <= time_s < (s.end_s or s.start_s)]
    if holding:
        return holding[0]
    last = max(timed, key=lambda s: s.start_s)
    if time_s > (last.end_s or last.start_s) + 1e-6:
        raise ExtensionError(f"{path}: time_s {time_s} is after the end of the video "
                             f"({last.end_s:.3f} s)")
    return last
