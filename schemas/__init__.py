"""Shared vocabulary of mediabind: modalities, settings, records, payload contract.

Every other package imports from here; this package imports nothing of ours.
"""

from schemas.modality import MODALITIES, Kind, Modality, ModalitySpec, spec
from schemas.payload import (
    FILE_LEVEL_INDEX,
    INDEXED_FIELDS,
    SegmentPolicy,
    collection_name,
    point_id,
)
from schemas.records import EmbeddingRecord, MediaItem, Rejected, Segment, Stage
from schemas.settings import Settings, get_settings
from schemas.sink import PointSink

__all__ = [
    "FILE_LEVEL_INDEX",
    "INDEXED_FIELDS",
    "MODALITIES",
    "EmbeddingRecord",
    "Kind",
    "MediaItem",
    "Modality",
    "ModalitySpec",
    "PointSink",
    "Rejected",
    "Segment",
    "SegmentPolicy",
    "Settings",
    "Stage",
    "collection_name",
    "get_settings",
    "point_id",
    "spec",
]
