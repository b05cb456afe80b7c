"""The records that flow between stages (DESIGN.md §1).

source → MediaItem → Segment → EmbeddingRecord → store; any stage may emit a
Rejected instead. Records are plain frozen dataclasses: cheap to create,
picklable for Ray, and typed (no string-keyed batch dicts across modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from schemas.modality import Kind, Modality


class Stage(StrEnum):
    """Where in the path of a file something happened (used by Rejected)."""

    SOURCE = "source"  # listing/reading the archive, safety limits
    PROBE = "probe"  # deciding what a file is (ffprobe, magic bytes)
    DECODE = "decode"  # turning bytes into arrays
    EMBED = "embed"  # preprocessing and the model
    STORE = "store"  # writing to Qdrant


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One file found in a source, identified by the sha256 of its bytes.

    ``archive`` is the source root as given by the user (a folder path or an
    archive/fsspec URI); ``member`` the path inside it (POSIX, relative).
    ``locations`` holds every ``source_uri`` where the same bytes were seen,
    first seen first, so duplicates are one item that remembers all paths.
    """

    item_id: str
    archive: str
    member: str
    size_bytes: int
    kind: Kind
    mime: str = "application/octet-stream"
    mtime: float | None = None
    locations: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source_uri(self) -> str:
        """The first location: ``<archive>!/<member>`` inside archives, else a path/URI."""
        return self.locations[0] if self.locations else join_uri(self.archive, self.member)


def join_uri(archive: str, member: str) -> str:
    """The location of a member: folders join with '/', archives with '!/'."""
    if any(archive.endswith(ext) for ext in (".tar", ".tar.gz", ".tgz", ".zip")):
        return f"{archive}!/{member}"
    return f"{archive.rstrip('/')}/{member}"


@dataclass(frozen=True, slots=True)
class Segment:
    """One model-ready window of an item, in the layout ``ModalitySpec.decoded`` gives.

    ``index`` counts windows from 0 in time (or text) order. Text segments
    carry the chunk in ``data`` (a str) and character offsets in ``extra``.
    """

    item_id: str
    modality: Modality
    kind: Kind
    index: int
    start_s: float | None
    end_s: float | None
    data: np.ndarray | str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmbeddingRecord:
    """A vector ready for Qdrant: float32 [1024], unit L2 norm, with its payload."""

    point_id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A file (or part of one) that a stage could not handle, and why.

    ``item_id`` is empty when the bytes were never read (e.g. a path rejected
    for traversal before reading).
    """

    item_id: str
    uri: str
    stage: Stage
    reason: str
    # True when the next run may well succeed (a worker lost, a model failure): the
    # ledger then lets it retry; False (the default) for a verdict on the bytes.
    transient: bool = False
    size: int | None = None  # of the object, when known: the ledger keys on it
    mtime: float | None = None
