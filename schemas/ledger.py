"""The ledger: what each listed object of a source became, per collection (DESIGN.md §5).

Planning lists a source without reading content: every object (a folder's
file, an archive, an object under a URL prefix) is a ``Listed`` with its size
and version (mtime, or an ETag where the store gives one). The ledger maps
each location that a run settled to a ``LedgerEntry``: the item its bytes
were, how many points it has, or why it was refused. A rerun anti-joins the
listing against it and reads only objects that are new, changed, or whose last
outcome was transient, so a rerun of an unchanged source reads no media.

Entries of three kinds (``EntryKind``):

- ``item``: one file's bytes were stored as ``item_id`` (also a second path of
  the same bytes);
- ``rejected``: the file was refused; ``transient`` ones (a worker lost, a
  preprocessing or model failure) are tried again by the next run, permanent
  ones (corrupt, unsafe, too large) only once the object changes. A file refused
  because no modality knows its kind is tried again when the modality registry
  changes (``registry`` holds the registry's fingerprint at the time);
- ``container``: an archive listed in the source was read to its end and every
  member settled; its members have entries of their own (``archive!/member``).

An entry is written only after the points it stands for are acknowledged by
the store, so the ledger never claims more than the store holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing: where it is and which version, no content read."""

    uri: str
    size: int | None
    version: str | None  # str(mtime) or an ETag / version id; None when unknown


def version_of(mtime: float | None) -> str | None:
    """The version of a file known only by its modification time."""
    return None if mtime is None else repr(float(mtime))


class EntryKind(StrEnum):
    ITEM = "item"
    REJECTED = "rejected"
    CONTAINER = "container"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What one location became in one collection."""

    uri: str
    source: str  # the normalised source it was listed in (``MediaItem.archive``)
    size: int | None
    version: str | None
    kind: EntryKind
    item_id: str = ""
    points: int = 0
    stage: str = ""  # for rejections: the stage that refused it
    reason: str = ""
    transient: bool = False
    registry: str = ""
    run_id: str = ""

    def same_object(self, listed: Listed) -> bool:
        """The listing shows the very object this entry was made from."""
        return (listed.version is not None and listed.size == self.size
                and listed.version == self.version)

    def is_final(self, registry: str) -> bool:
        """Nothing is left to do for this object while it stays unchanged.

        ``registry`` is ``ingest.kinds.registry_fingerprint``: a hash, then
        ``|name@version`` per active modality extension. An item embedded by an
        extension is settled only while that very version is active.
        """
        if self.kind is EntryKind.ITEM and self.registry.startswith(EXTENSION_PREFIX):
            return self.registry[len(EXTENSION_PREFIX):] in registry.split("|")[1:]
        if self.kind is not EntryKind.REJECTED:
            return True
        if self.transient:
            return False
        return self.stage != UNKNOWN_KIND_STAGE or self.registry == registry


# The ``registry`` of an item embedded by a modality extension: "ext:name@version".
EXTENSION_PREFIX = "ext:"
# Refusals at this stage (no modality knows the file's kind) are retried when the
# modality registry's fingerprint changes.
UNKNOWN_KIND_STAGE = "probe"


@runtime_checkable
class Ledger(Protocol):
    """Where a run records, and a rerun reads, what each listed object became."""

    def lookup(self, uris: Sequence[str]) -> dict[str, LedgerEntry]:
        """The entries of these locations (missing ones are absent)."""

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        """Write entries (idempotent: the latest entry of a location wins)."""

    def entries(self, source: str) -> Iterator[LedgerEntry]:
        """Every entry listed under ``source``."""

    def forget(self, uris: Iterable[str]) -> None:
        """Drop the entries of these locations (their objects left the source)."""

    def count(self) -> int:
        """Entries in this ledger."""
