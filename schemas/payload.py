"""The Qdrant payload contract, point ids and collection names (DESIGN.md §3)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.extension import is_extension, name_of
from schemas.modality import Modality
from schemas.records import MediaItem, Segment

# Namespace for point ids; never change it, or every stored id changes.
POINT_NAMESPACE = uuid.UUID("6d2f7f9e-3c51-5b8a-9a57-8d1f0c6b4e21")

# The file-level point of an item (mean of its segments, renormalised) uses
# this segment index. It is written after the item's segments, so its presence
# means the item is complete (planning skips such items).
FILE_LEVEL_INDEX = -1

# Payload fields with a Qdrant index, and the index type.
INDEXED_FIELDS: dict[str, str] = {
    "item_id": "keyword",
    "source_uri": "keyword",
    "archive": "keyword",
    "kind": "keyword",
    "modality": "keyword",
    "start_s": "float",
    "segment_index": "integer",
    "model_id": "keyword",
    "ingested_at": "datetime",
    "run_id": "keyword",
}

# Every payload field a point may carry (the indexed ones included).
PAYLOAD_FIELDS: tuple[str, ...] = (
    *INDEXED_FIELDS,
    "member",
    "end_s",
    "duration_s",
    "mime",
    "size_bytes",
    "width",
    "height",
    "text",
    "policy",
    "whole",
    "meta",
    "extension_version",  # only on a modality extension's points (mediabind bind)
)

# The points whose presence says an item is complete (filter form, ``search.filters``):
# its file-level points, or the one point of a single-segment item, which is segment
# and file at once (``SegmentPolicy.one_point``; payload ``whole``).
COMPLETING_POINTS: dict = {"not": {"segment_index": {"gte": 0}, "not": {"whole": 1}}}

# Video frame sampling (``SegmentPolicy.sampling``) → its mark in the policy id.
SAMPLINGS = {"exact": "", "keyframe": "k"}


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """How long media is cut into windows; part of every point id and collection name.

    Every item with more than one segment also gets one file-level point per
    modality (index ``FILE_LEVEL_INDEX``, the mean): it is always written, last,
    because its presence is what marks the item complete for incremental and
    resumed runs. With ``one_point`` (the default), an item of one segment (an
    image, a short text or clip) is stored as that one point, marked
    ``whole``: segment and file at once, and its own completion mark. Without it
    (the layout of collections written before), such an item had two points
    holding the same vector; those collections move over by ``reembed``.

    ``sampling`` says which video frames a window takes: ``exact`` (the default,
    the reference's frames at the window's times) or ``keyframe`` (the keyframe
    nearest each of those times, decoded alone: a deviation that makes long-GOP
    archives far cheaper; see docs/operations.md). It is part of the policy id
    (suffix ``k``), so the two never share a collection.
    """

    segment_s: float = 2.0
    stride_s: float = 2.0
    video_crops: int = 3
    one_point: bool = True
    sampling: str = "exact"

    def __post_init__(self) -> None:
        if self.segment_s <= 0 or self.stride_s <= 0:
            raise ValueError("segment_s and stride_s must be positive")
        if self.video_crops not in (1, 3):
            raise ValueError("video_crops must be 1 or 3")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, "
                             f"got {self.sampling!r}")

    @property
    def policy_id(self) -> str:
        layout = "u" if self.one_point else ""  # u: a single-segment item is one point
        frames = SAMPLINGS[self.sampling]  # "" for exact: earlier ids are unchanged
        return f"w{self.segment_s:g}s{self.stride_s:g}c{self.video_crops}{layout}{frames}"


def point_id(item_id: str, modality: Modality | str, index: int, policy: SegmentPolicy,
             model_id: str) -> str:
    """Deterministic uuid5: a rerun overwrites the same point, never duplicates it.

    A modality extension's points key on ``name@version`` where a built-in modality
    keys on its name, so a retrained extension writes new points (and the built-in
    modalities' ids are unchanged).
    """
    name = modality.identity if is_extension(modality) else Modality(modality).value
    key = f"{item_id}|{name}|{index}|{policy.policy_id}|{model_id}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


def collection_name(model_id: str, policy: SegmentPolicy, prefix: str = "mediabind") -> str:
    """The physical collection for a model and policy; users reach it through an alias."""
    raw = f"{prefix}__{model_id}__{policy.policy_id}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def build_payload(item: MediaItem, segment: Segment, *, model_id: str, policy: SegmentPolicy,
                  run_id: str, duration_s: float | None = None,
                  ingested_at: datetime | None = None) -> dict[str, Any]:
    """The payload of one point, following the contract above."""
    payload: dict[str, Any] = {
        "item_id": item.item_id,
        "source_uri": list(item.locations) or [item.source_uri],
        "archive": item.archive,
        "member": item.member,
        "kind": item.kind.value,
        "modality": name_of(segment.modality),
        "segment_index": segment.index,
        "start_s": segment.start_s,
        "end_s": segment.end_s,
        "duration_s": duration_s,
        "mime": item.mime,
        "size_bytes": item.size_bytes,
        "model_id": model_id,
        "policy": policy.policy_id,
        "ingested_at": (ingested_at or datetime.now(UTC)).isoformat(),
        "run_id": run_id,
        "meta": dict(item.meta),
    }
    for key in ("width", "height"):
        if key in segment.extra:
            payload[key] = segment.extra[key]
    if isinstance(segment.data, str):
        payload["text"] = segment.data
    if is_extension(segment.modality):
        payload["extension_version"] = segment.modality.version
    return payload
