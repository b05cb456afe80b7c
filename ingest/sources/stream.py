"""The member pipeline: ledger → check → spool + sha256 → follow nested archives → kind → item.

Every failure becomes a ``Rejected``; two scopes (see ``safety.py``):
MemberRejected skips one member, ContainerStopped ends one archive (the outer
one goes on). Limits hold per member and per top-level archive (a shard),
never per source, so a source of any size can be read.

With a ledger (``schemas.ledger``), the objects the source lists at its top
level (a folder's files, the archives in it, the source archive itself) are
looked up before any byte of them is read, in batches: an object whose entry
is final and whose size and version are unchanged becomes ``Unchanged`` and is
not opened. A tar stream's members are not looked up one by one (reaching one
means reading through the ones before it); the tar as a whole is.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from ingest.kinds import Detection, classify
from ingest.manifest import ManifestRow
from ingest.sources.members import ContainerEnd, RawMember, Sidecar, SourceEntry, Unchanged
from ingest.sources.readers import archive_reader
from ingest.sources.safety import (
    Budget,
    ContainerStopped,
    MemberRejected,
    ReadGuard,
    safe_member_path,
)
from ingest.sources.spool import Spooled, drain, spool
from schemas import MediaItem, Rejected, Settings, Stage
from schemas.ledger import Ledger, LedgerEntry, Listed, version_of
from schemas.records import join_uri

NESTED_SEPARATOR = "!/"  # a member inside a nested archive: outer/inner.zip!/x.jpg
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20
LOOKUP_BATCH = 256  # top-level objects looked up in the ledger at once
RECENT_SKIPS = 4096  # unchanged files remembered, so their sidecars are skipped too

Output = SourceEntry | Rejected | Sidecar | Unchanged | ContainerEnd


@dataclass
class RunState:
    """What one ``iter_source`` call knows: settings, limits, manifest, bytes seen.

    ``single_file``: the source is one file, recorded as its own archive (so a
    re-embed or prune of it never reaches the rest of its folder); its one
    member's location is the file itself.
    """

    archive: str
    settings: Settings
    spool_dir: Path
    manifest: dict[str, ManifestRow]
    budget: Budget
    seen: dict[str, Detection] = field(default_factory=dict)
    single_file: bool = False
    ledger: Ledger | None = None
    registry: str = ""  # the modality registry's fingerprint (``ingest.kinds``)
    container: Listed | None = None  # the source itself, when it is an archive
    skipped: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def uri(self, member: str) -> str:
        if self.single_file or not member:
            return self.archive
        return join_uri(self.archive, member)

    def guard(self, raw: RawMember) -> ReadGuard:
        return ReadGuard(self.budget, self.settings.max_member_bytes, raw.ratio_check)

    def unchanged(self, listed: Listed, known: dict[str, LedgerEntry]) -> LedgerEntry | None:
        """The ledger entry that makes reading ``listed`` unnecessary, if any."""
        entry = known.get(listed.uri)
        if entry is None or not entry.same_object(listed) or not entry.is_final(self.registry):
            return None
        self.skipped[listed.uri] = None
        if len(self.skipped) > RECENT_SKIPS:
            self.skipped.popitem(last=False)
        return entry


def iter_source_members(state: RunState,
                        members: Generator[RawMember, None, None]) -> Iterator[Output]:
    """The whole source: a folder's files, or the members of the source archive."""
    if state.container is None or state.ledger is None:
        yield from iter_container(state, members, prefix="", depth=0)
        return
    known = state.ledger.lookup([state.container.uri]) if state.ledger is not None else {}
    entry = state.unchanged(state.container, known)
    if entry is not None:
        members.close()
        yield Unchanged(entry)
        return
    counted = _Counted()
    complete = yield from iter_container(state, members, prefix="", depth=0, counted=counted)
    yield ContainerEnd(state.container, counted.n, complete)


@dataclass
class _Counted:
    n: int = 0


def iter_container(state: RunState, members: Generator[RawMember, None, None], prefix: str,
                   depth: int, counted: _Counted | None = None) -> Generator[Output, None, bool]:
    """One container's members; a broken container ends with one Rejected.

    Returns whether the container was read to its end.
    """
    container = prefix.removesuffix(NESTED_SEPARATOR)
    counted = counted or _Counted()
    try:
        for batch in _batches(state, members, depth):
            known = _lookup(state, batch, prefix) if depth == 0 and not prefix else None
            for raw in batch:
                yield from handle_member(state, raw, prefix, depth, known)
                counted.n += 1
    except ContainerStopped as exc:
        yield Rejected("", state.uri(container), Stage.SOURCE,
                       f"{exc} (after {counted.n} members; the rest is not read)")
        return False
    finally:
        members.close()
    return True


def _batches(state: RunState, members: Iterator[RawMember],
             depth: int) -> Iterator[list[RawMember]]:
    """Top-level members in batches for the ledger; one by one elsewhere, and always in
    a tar stream, where taking the next member means reading past this one."""
    size = LOOKUP_BATCH if state.ledger is not None and depth == 0 else 1
    while True:
        first = next(members, None)
        if first is None:
            return
        if first.sequential or size == 1:
            yield [first]
            continue
        yield [first, *islice(members, size - 1)]


def _lookup(state: RunState, batch: list[RawMember], prefix: str) -> dict[str, LedgerEntry] | None:
    if state.ledger is None or state.container is not None or batch[0].sequential:
        return None  # inside the source archive: the archive as a whole was looked up
    uris = []
    for raw in batch:
        try:
            uris.append(state.uri(prefix + safe_member_path(raw.name)))
        except MemberRejected:
            continue  # refused by handle_member, unread
    return state.ledger.lookup(uris)


def handle_member(state: RunState, raw: RawMember, prefix: str, depth: int,
                  known: dict[str, LedgerEntry] | None = None) -> Iterator[Output]:
    """Check, read and describe one member (or follow it, when it is an archive)."""
    guard = state.guard(raw)
    member = prefix + raw.name  # as the archive spells it, until it is found safe
    try:
        state.budget.count_member()
        member = prefix + safe_member_path(raw.name)
        if known is not None and (skip := _skip(state, raw, member, known)) is not None:
            if isinstance(skip, LedgerEntry):
                yield Unchanged(skip)
            return
        _check_declared(raw)
        if archive_reader(member) is not None:
            yield from follow_nested(state, raw, member, depth, guard)
            return
        spooled = spool(raw, member, state.spool_dir, guard)
    except MemberRejected as exc:
        if guard.read == 0:  # refused before reading: a tar stream must still pass it
            drain(raw, guard)
        yield Rejected("", state.uri(member), Stage.SOURCE, str(exc), size=raw.size,
                       mtime=raw.mtime)
        return
    yield describe(state, raw, member, spooled)


def _skip(state: RunState, raw: RawMember, member: str,
          known: dict[str, LedgerEntry]) -> LedgerEntry | bool | None:
    """The entry of an unchanged object; True for the sidecar of an unchanged file (it has
    no entry of its own and nothing to add); None: read it."""
    uri = state.uri(member)
    entry = state.unchanged(listed_member(uri, raw), known)
    if entry is not None:
        return entry
    if member.lower().endswith(SIDECAR_SUFFIX) and \
            state.uri(member[: -len(SIDECAR_SUFFIX)]) in state.skipped:
        return True
    return None


def listed_member(uri: str, raw: RawMember) -> Listed:
    return Listed(uri, raw.size, version_of(raw.mtime))


def _check_declared(raw: RawMember) -> None:
    if raw.problem:
        raise MemberRejected(raw.problem)
    if raw.size == 0:
        raise MemberRejected("empty file (0 bytes)")


def follow_nested(state: RunState, raw: RawMember, member: str, depth: int,
                  guard: ReadGuard) -> Iterator[Output]:
    """Read an archive found inside the source, up to ``settings.max_nesting`` deep."""
    if depth + 1 > state.settings.max_nesting:
        raise MemberRejected(f"nested archive deeper than max_nesting="
                             f"{state.settings.max_nesting}; not followed")
    reader = archive_reader(member)
    assert reader is not None
    top_level = depth == 0 and state.container is None  # an archive listed in a folder
    listed = top_level and state.ledger is not None  # and its end is for the ledger
    outer = state.budget
    if top_level:  # a shard of its own, with its own limits
        state.budget = Budget.from_settings(state.settings)
        guard = state.guard(raw)
    try:
        local = raw.local_path or spool(raw, member, state.spool_dir, guard).path
        try:
            with local.open("rb") as inner:
                members = reader(inner, state.settings.max_compression_ratio)
                counted = _Counted()
                complete = yield from iter_container(state, members, member + NESTED_SEPARATOR,
                                                     depth + 1, counted)
        finally:
            if raw.local_path is None:
                local.unlink(missing_ok=True)
    finally:
        state.budget = outer
    if listed:
        yield ContainerEnd(listed_member(state.uri(member), raw), counted.n, complete)


def describe(state: RunState, raw: RawMember, member: str, spooled: Spooled) -> Output:
    """The SourceEntry for spooled bytes, or why they are refused."""
    location = state.uri(member)
    if spooled.size == 0:
        spooled.release()
        return Rejected("", location, Stage.SOURCE, "empty file (0 bytes)")
    if member.lower().endswith(SIDECAR_SUFFIX):
        return read_sidecar(member, location, spooled)
    row = state.manifest.get(member)
    detection = _detect(state, member, spooled, row)
    if detection.kind is None:
        spooled.release()
        return Rejected(spooled.sha256, location, Stage.PROBE, detection.reason,
                        size=spooled.size, mtime=raw.mtime)
    duplicate = spooled.sha256 in state.seen
    state.seen.setdefault(spooled.sha256, detection)
    item = MediaItem(
        item_id=spooled.sha256, archive=state.archive, member=member,
        size_bytes=spooled.size, kind=detection.kind, mime=detection.mime, mtime=raw.mtime,
        locations=(location,), meta=dict(row.meta) if row else {},
    )
    return SourceEntry(item, spooled.path, duplicate, temporary=spooled.temporary)


def _detect(state: RunState, member: str, spooled: Spooled, row: ManifestRow | None) -> Detection:
    # The same bytes were classified already (no second ffprobe); a manifest
    # kind overrides detection (and needs no ffprobe either).
    if row is not None and row.kind is not None:
        return Detection(row.kind, classify(member, spooled.head).mime)
    known = state.seen.get(spooled.sha256)
    if known is not None:
        return known
    return classify(member, spooled.head, spooled.path,
                    probe_timeout_s=state.settings.ffmpeg_timeout_s)


def read_sidecar(member: str, location: str, spooled: Spooled) -> Sidecar:
    """A ``<file>.json`` member: a JSON object of metadata for ``<file>``."""
    target = member[: -len(SIDECAR_SUFFIX)]
    try:
        if spooled.size > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        meta = json.loads(spooled.path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return Sidecar(target, location, spooled.sha256, None, f"invalid sidecar JSON: {exc}")
    finally:
        spooled.release()
    return Sidecar(target, location, spooled.sha256, meta)
