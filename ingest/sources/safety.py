"""Safety by construction: member paths we accept, and the limits a read stays within.

Readers never write a member name to disk: bytes go to spool files named by
``tempfile`` (see ``spool.py``). Names are still checked so that a hostile one
is reported, and so ``member`` paths are always clean relative POSIX paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from schemas import Settings

# A member must decompress this far before its ratio is judged: tiny files
# (and tar's zero padding) compress far beyond any sane ratio without harm.
RATIO_GRACE_BYTES = 1 << 20

_DRIVE = re.compile(r"^[A-Za-z]:")


class MemberRejected(Exception):  # noqa: N818 (a verdict, not a fault)
    """This member is refused; the container goes on with the next one."""


class MemberUnreadable(MemberRejected):
    """This member could not be read just now (an I/O error of the filesystem or the
    object store, not a verdict on its bytes): refused this run, retried by the next."""


class ContainerStopped(Exception):  # noqa: N818
    """This archive cannot be read further (corrupt, or a decompression bomb)."""


def readable_name(name: str) -> str:
    """A name that is valid text. Bytes that are not UTF-8 (old Latin-1 archives, odd
    file systems) reach Python as lone surrogates, which no payload, log or Parquet
    file can hold; such a name is read as Latin-1 instead, which maps every byte to
    one character (``caf\\xe9.txt`` becomes ``café.txt``). The bytes are still read
    from the original entry: this is the name we record, not the one we open."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("latin-1")
    return name


def safe_member_path(name: str) -> str:
    """The clean relative POSIX form of an archive member name, or MemberRejected."""
    posix = readable_name(name).replace("\\", "/")
    if "\x00" in posix:
        raise MemberRejected("unsafe path: NUL byte in the name")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise MemberRejected(f"unsafe path: absolute path {name!r}")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MemberRejected(f"unsafe path: {name!r} climbs out of the archive ('..')")
    if not parts:
        raise MemberRejected(f"unsafe path: empty name {name!r}")
    return "/".join(parts)


def recorded_name(name: str) -> str | None:
    """A member's name as ingestion records it (``safe_member_path``), or None for a
    name ingestion refuses: what to compare a stored ``member`` with."""
    try:
        return safe_member_path(name)
    except MemberRejected:
        return None


@dataclass
class Budget:
    """Counts members and bytes read from one archive (nested archives included).

    Limits hold per top-level archive, the unit of work (a shard), never per
    source: a source of any size can be read. A folder's own files are bounded
    one by one (``max_member_bytes``); ``unlimited`` is their budget.
    """

    max_members: int
    max_total_bytes: int
    members: int = 0
    total_bytes: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        return cls(settings.max_members, settings.max_total_bytes)

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(1 << 62, 1 << 62)

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ContainerStopped(f"archive has more than max_members={self.max_members} "
                                   "files; stopped reading it")

    def count_bytes(self, n: int) -> None:
        self.total_bytes += n
        if self.total_bytes > self.max_total_bytes:
            raise ContainerStopped(f"archive exceeds max_total_bytes={self.max_total_bytes}; "
                                   "stopped reading it")


@dataclass
class ReadGuard:
    """Checks every chunk read from one member: source budget, member size, ratio."""

    budget: Budget
    max_member_bytes: int
    ratio_check: Callable[[int], None] | None = None
    read: int = 0

    def __call__(self, n: int) -> None:
        self.read += n
        self.budget.count_bytes(n)
        if self.read > self.max_member_bytes:
            raise MemberRejected(f"file larger than max_member_bytes={self.max_member_bytes}")
        if self.ratio_check is not None:
            self.ratio_check(self.read)


def check_ratio(expanded: int, compressed: int, max_ratio: float, what: str) -> None:
    """MemberRejected when ``expanded`` bytes came from too few ``compressed`` bytes."""
    if expanded <= RATIO_GRACE_BYTES:
        return
    ratio = expanded / max(compressed, 1)
    if ratio > max_ratio:
        raise MemberRejected(f"{what} expands {ratio:.0f}x, over max_compression_ratio="
                             f"{max_ratio:g} (decompression bomb?)")
