"""The records of the source layer: what readers yield, and what ``iter_source`` yields."""

from __future__ import annotations

import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ingest.sources.safety import MemberRejected
from schemas import MediaItem
from schemas.ledger import LedgerEntry, Listed

# What reading a damaged archive may raise, from tarfile/zipfile/gzip/bz2/lzma.
# A reader maps these to MemberRejected or ContainerStopped; nothing escapes.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, NotImplementedError, zlib.error, lzma.LZMAError,
    struct.error, tarfile.TarError, zipfile.BadZipFile,
)


@dataclass
class SourceEntry:
    """One file of a source, spooled to a local file that lives until ``release()``.

    ``duplicate``: the same bytes were already yielded in this run; ``item.locations``
    then holds only the new location (for ``PointSink.add_locations``).
    """

    item: MediaItem
    path: Path
    duplicate: bool = False
    temporary: bool = field(default=False, repr=False)

    def release(self) -> None:
        """Delete the spool file (a no-op for files read in place from a folder)."""
        if self.temporary:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> SourceEntry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class RawMember:
    """One entry of a container as its reader sees it, before any byte is read.

    ``problem`` is the reader's own verdict (a link, a device, an encrypted zip
    member): such an entry is rejected and never opened for its content.
    ``sequential``: skipping the entry means reading through it (tar streams).
    ``read_error``: what a read failure means: only this member is lost
    (MemberRejected) or the rest of the container too (ContainerStopped).
    """

    name: str
    size: int | None
    mtime: float | None
    open: Callable[[], BinaryIO] | None
    problem: str | None = None
    local_path: Path | None = None
    sequential: bool = False
    ratio_check: Callable[[int], None] | None = None
    read_error: type[Exception] = MemberRejected


@dataclass(frozen=True)
class Sidecar:
    """A ``<file>.json`` member: metadata for the member ``target`` (or why not)."""

    target: str
    uri: str
    item_id: str
    meta: dict[str, Any] | None
    error: str = ""


@dataclass(frozen=True)
class Unchanged:
    """A listed object the ledger says is settled and unchanged: not read at all."""

    entry: LedgerEntry


@dataclass(frozen=True)
class ContainerEnd:
    """A top-level archive was read (``complete``: to its end, every member handed over)."""

    listed: Listed
    members: int
    complete: bool
    part: tuple[int, int] | None = None  # one part (i, of n) of an archive read by range
