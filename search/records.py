"""What the store checks before it writes, and how it cuts a write into upserts.

Every record of a write is validated before anything is stored (ids, payload
fields, model and policy, unit-norm finite vectors), so a bad batch never
leaves half of itself behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from schemas.payload import FILE_LEVEL_INDEX, PAYLOAD_FIELDS
from schemas.records import EmbeddingRecord

NORM_TOLERANCE = 1e-3  # records are L2-normalised float32; more drift means a bug upstream


def check_id(point_id: str) -> str:
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise ValueError(f"point id {point_id!r} is not a UUID (see schemas.point_id)") from None


def check_vector(vector: Any, dim: int, *, unit: bool) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"vector has shape {arr.shape}, the collection holds ({dim},)")
    if not np.isfinite(arr).all():
        raise ValueError("vector holds NaN or infinite values")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise ValueError("vector is all zeros: cosine similarity is undefined")
    if unit and abs(norm - 1.0) > NORM_TOLERANCE:
        raise ValueError(f"vector norm is {norm:.4f}; records must be L2-normalised")
    return arr


def check_record(record: EmbeddingRecord, spec: Mapping[str, Any]) -> np.ndarray:
    check_id(record.point_id)
    where = f"record {record.point_id}"
    unknown = set(record.payload) - set(PAYLOAD_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown payload fields {sorted(unknown)}")
    if not isinstance(record.payload.get("item_id"), str) or not record.payload["item_id"]:
        raise ValueError(f"{where}: payload needs an item_id")
    if not isinstance(record.payload.get("source_uri", []), list):
        raise ValueError(f"{where}: payload source_uri must be a list of paths")
    for key in ("model_id", "policy"):
        if record.payload.get(key, spec[key]) != spec[key]:
            raise ValueError(f"{where}: {key} {record.payload[key]!r} does not match the "
                             f"collection's {spec[key]!r}")
    try:
        return check_vector(record.vector, spec["dim"], unit=True)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None



def upsert_spans(records: Sequence[EmbeddingRecord], size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` spans of about ``size`` records that never split the file-level
    points of one item: they mark the item complete together (a video's vision and
    audio), so one upsert (atomic in Qdrant) must carry all of them."""
    start = 0
    while start < len(records):
        end = min(start + size, len(records))
        while end < len(records) and same_item_file_level(records[end - 1], records[end]):
            end += 1
        yield start, end
        start = end


def same_item_file_level(a: EmbeddingRecord, b: EmbeddingRecord) -> bool:
    return (a.payload.get("segment_index") == b.payload.get("segment_index") == FILE_LEVEL_INDEX
            and a.payload.get("item_id") == b.payload.get("item_id"))
