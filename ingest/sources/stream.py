"""The member pipeline: ledger → check → spool + sha256 → follow nested archives → kind → item.

Every failure becomes a ``Rejected``; two scopes (see ``safety.py``):
MemberRejected skips one member, ContainerStopped ends one archive (the outer
one goes on). Limits hold per member and per top-level archive (a shard),
never per source, so a source of any size can be read.

What to read was decided before (``ingest.shards``: the listing anti-joined
with the ledger); this module reads one shard's members. With
``record_containers``, each archive listed at the top (the source archive, or
one in a folder) ends with a ``ContainerEnd`` saying whether it was read to
its end, for its ledger entry.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingest.kinds import Detection, classify
from ingest.manifest import ManifestRow
from ingest.probe import probe_isolated
from ingest.sources.members import ContainerEnd, RawMember, Sidecar, SourceEntry
from ingest.sources.readers import archive_reader
from ingest.sources.safety import (
    Budget,
    ContainerStopped,
    MemberRejected,
    MemberUnreadable,
    ReadGuard,
    safe_member_path,
)
from ingest.sources.spool import Spooled, drain, spool
from schemas import MediaItem, Rejected, Settings, Stage
from schemas.ledger import Listed, version_of
from schemas.records import join_uri

NESTED_SEPARATOR = "!/"  # a member inside a nested archive: outer/inner.zip!/x.jpg
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20

Output = SourceEntry | Rejected | Sidecar | ContainerEnd


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
    record_containers: bool = False
    container: Listed | None = None  # the source itself, when it is an archive
    part: tuple[int, int] | None = None  # the part of it this shard reads (by range)

    def uri(self, member: str) -> str:
        if self.single_file or not member:
            return self.archive
        return join_uri(self.archive, member)

    def guard(self, raw: RawMember) -> ReadGuard:
        return ReadGuard(self.budget, self.settings.max_member_bytes, raw.ratio_check)


def iter_source_members(state: RunState,
                        members: Generator[RawMember, None, None]) -> Iterator[Output]:
    """A shard: loose files of a folder, or the members of the source archive."""
    if state.container is None or not state.record_containers:
        yield from iter_container(state, members, prefix="", depth=0)
        return
    counted = _Counted()
    complete = yield from iter_container(state, members, prefix="", depth=0, counted=counted)
    yield ContainerEnd(state.container, counted.n, complete, state.part)


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
        for raw in members:
            yield from handle_member(state, raw, prefix, depth)
            counted.n += 1
    except ContainerStopped as exc:
        yield Rejected("", state.uri(container), Stage.SOURCE,
                       f"{exc} (after {counted.n} members; the rest is not read)")
        return False
    finally:
        members.close()
    return True


def handle_member(state: RunState, raw: RawMember, prefix: str, depth: int) -> Iterator[Output]:
    """Check, read and describe one member (or follow it, when it is an archive)."""
    guard = state.guard(raw)
    member = prefix + raw.name  # as the archive spells it, until it is found safe
    try:
        state.budget.count_member()
        member = prefix + safe_member_path(raw.name)
        _check_declared(raw)
        if archive_reader(member) is not None:
            yield from follow_nested(state, raw, member, depth, guard)
            return
        spooled = spool(raw, member, state.spool_dir, guard)
    except MemberRejected as exc:
        if guard.read == 0:  # refused before reading: a tar stream must still pass it
            drain(raw, guard)
        yield Rejected("", state.uri(member), Stage.SOURCE, str(exc), size=raw.size,
                       mtime=raw.mtime, transient=isinstance(exc, MemberUnreadable))
        return
    yield describe(state, raw, member, spooled)


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
    listed = top_level and state.record_containers  # and its end is for the ledger
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
    if complete and counted.n == 0:  # its bytes would vanish unreported
        yield Rejected("", state.uri(member), Stage.SOURCE,
                       "an archive with no members: nothing in it to ingest",
                       size=raw.size, mtime=raw.mtime)
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
    # The same bytes were classified already (no second probe); a manifest
    # kind overrides detection (and needs no probe either).
    if row is not None and row.kind is not None:
        return Detection(row.kind, classify(member, spooled.head, home=state.settings.home).mime)
    known = state.seen.get(spooled.sha256)
    if known is not None:
        return known
    return classify(member, spooled.head, spooled.path,
                    probe_timeout_s=state.settings.ffmpeg_timeout_s,
                    probe_isolated=probe_isolated(state.settings), home=state.settings.home)


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
