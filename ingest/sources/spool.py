"""Copy one member's bytes to a spool file while hashing them, within the limits.

Spool files get names from ``tempfile`` inside the spool folder (never a name
from the archive), so nothing can be written anywhere else. Memory stays flat:
bytes move in ``CHUNK``-sized pieces.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ingest.kinds import HEAD_BYTES
from ingest.sources.members import READ_ERRORS, RawMember
from ingest.sources.safety import MemberRejected, MemberUnreadable, ReadGuard

CHUNK = 1 << 20
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,10}){1,2}$")


@dataclass
class Spooled:
    """A member's bytes on local disk, their sha256, size and first bytes."""

    path: Path
    sha256: str
    size: int
    head: bytes
    temporary: bool

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def spool(raw: RawMember, member: str, spool_dir: Path, guard: ReadGuard) -> Spooled:
    """The member's bytes in a local file (its own file when it already is local)."""
    if raw.local_path is not None:
        return _hash_in_place(raw, raw.local_path, guard)
    fd, name = tempfile.mkstemp(prefix="mb-", suffix=_safe_suffix(member), dir=spool_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, _open(raw) as stream:
            digest, size, head = copy_stream(stream, raw, guard, out.write)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spooled(path, digest, size, head, temporary=True)


def drain(raw: RawMember, guard: ReadGuard) -> None:
    """Read a refused member through, for containers that can only skip by reading."""
    if raw.sequential and raw.open is not None:
        with _open(raw) as stream:
            _drain_stream(stream, raw, guard)


def copy_stream(stream: BinaryIO, raw: RawMember, guard: ReadGuard,
                write: Callable[[bytes], object]) -> tuple[str, int, bytes]:
    """Copy all of ``stream`` through ``guard`` to ``write``: (sha256, size, head)."""
    digest = hashlib.sha256()
    head = b""
    try:
        while chunk := _read(stream, raw):
            guard(len(chunk))
            digest.update(chunk)
            head = head if len(head) >= HEAD_BYTES else (head + chunk)[:HEAD_BYTES]
            write(chunk)
    except MemberRejected:
        # A tar stream must still be read past this member to reach the next one.
        if raw.sequential:
            _drain_stream(stream, raw, guard)
        raise
    return digest.hexdigest(), guard.read, head


def _hash_in_place(raw: RawMember, path: Path, guard: ReadGuard) -> Spooled:
    with _open(raw) as stream:
        digest, size, head = copy_stream(stream, raw, guard, lambda _chunk: None)
    return Spooled(path, digest, size, head, temporary=False)


def _drain_stream(stream: BinaryIO, raw: RawMember, guard: ReadGuard) -> None:
    # Keep counting source bytes and checking the stream's ratio; the member
    # size limit no longer applies (the member is refused already).
    unbounded = ReadGuard(guard.budget, max_member_bytes=1 << 62, ratio_check=guard.ratio_check,
                          read=guard.read)
    while chunk := _read(stream, raw):
        unbounded(len(chunk))


def _open(raw: RawMember) -> BinaryIO:
    if raw.open is None:
        raise MemberRejected("entry has no content to read")
    try:
        return raw.open()
    except READ_ERRORS as exc:
        raise _read_error(raw, exc)(f"cannot open: {exc}") from exc


def _read(stream: BinaryIO, raw: RawMember) -> bytes:
    try:
        return stream.read(CHUNK)
    except READ_ERRORS as exc:
        raise _read_error(raw, exc)(f"cannot read (truncated or corrupt): {exc}") from exc


def _read_error(raw: RawMember, exc: BaseException) -> type[Exception]:
    """An I/O error on a member read on its own (a file, an object, a range) is passing:
    the next run tries it again. Anything else is the member's, or its stream's, verdict."""
    if isinstance(exc, OSError) and raw.read_error is MemberRejected:
        return MemberUnreadable
    return raw.read_error


def _safe_suffix(member: str) -> str:
    # Keep the extension (decoders and ffprobe like one) but only harmless characters.
    match = _SUFFIX.search(member.rsplit("/", 1)[-1])
    return match.group(0) if match else ""
