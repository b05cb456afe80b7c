"""Planning: list a source without reading content, anti-join the ledger, cut shards.

    list (stat / fs.find / the archive's own size)  → top-level objects
    anti-join against the ledger (batches)          → unchanged ones settle here, unread
    group what is left                              → shards: the unit of work and commit

A shard is either one archive listed at the top (an archive in a folder: the
WebDataset convention of many tars gives one shard per tar; a compressed
source archive) or a run of a folder's loose files, bounded by count and bytes
(``Settings.shard_files`` / ``shard_bytes``). Limits on members and bytes
(``max_members``, ``max_total_bytes``) hold per archive shard; loose files
are bounded one by one (``max_member_bytes``), so a source of any size can be
planned and read. A file's ``<file>.json`` sidecar is never cut from it, and
is skipped with it when the file is unchanged.

A source that is one uncompressed ``.tar`` or ``.zip`` is not read in one pass:
its member-offset index (``ingest.member_index``: tar headers hopped, the zip
central directory) lists its members, which are anti-joined and cut like a
folder's files into shards read by range in parallel (``split_archive``). Each
such shard is part ``i`` of ``n``; the archive is settled as a whole once all
its parts were read to their end. A compressed tar cannot be entered by range
and stays one shard.

A ``Shard`` is plain data (names, sizes, times; no open files), so it can be
written to the run's manifest and read by a process on another node; there,
``ingest.sources.iter_shard`` reads exactly its members (safe paths, limits,
spool + sha256 per member).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from schemas import Settings
from schemas.ledger import Ledger, LedgerEntry, Listed, version_of
from schemas.records import join_uri

LOOKUP_BATCH = 512  # listed objects looked up in the ledger at once
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class ListedMember:
    """One top-level object of a source, as the listing saw it (no content read)."""

    name: str  # as listed (relative POSIX path; judged by safe_member_path when read)
    size: int | None
    mtime: float | None
    problem: str | None = None  # a link or special file, refused when read
    etag: str | None = None  # where the store gives one; else the mtime is the version
    entry: Any = None  # a member of an indexed archive: its ``member_index.IndexEntry``

    @property
    def version(self) -> str | None:
        return self.etag or version_of(self.mtime)


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work: some loose files of a source, or one archive listed in it."""

    shard_id: str
    source: str  # the normalised source (``MediaItem.archive``)
    members: tuple[ListedMember, ...]
    archive: bool  # True: ``members`` is one archive, read whole
    whole_source: bool = False  # the source itself is this one object (file or archive)
    # Members of the source archive read by range (``split_archive``): this shard is part
    # ``part[0]`` of ``part[1]``, of the archive of ``identity`` (size, version) indexed.
    part: tuple[int, int] | None = None
    identity: tuple[int, str | None] | None = None

    @property
    def size(self) -> int:
        return sum(m.size or 0 for m in self.members)


@dataclass
class ShardPlan:
    """What a run has to do, decided before any byte of content is read."""

    source: str
    shards: list[Shard] = field(default_factory=list)
    unchanged: list[LedgerEntry] = field(default_factory=list)
    listed: int = 0  # top-level objects in the listing
    # The source archive, when every member of it is settled already (``split_archive``).
    settled_archive: Listed | None = None
    archive_members: int = 0

    @property
    def members(self) -> int:
        return sum(len(s.members) for s in self.shards)


def plan_shards(source: str, listing: Iterable[ListedMember], settings: Settings,
                ledger: Ledger | None, *, registry: str = "",
                whole_source: bool = False, members_of_archive: bool = False) -> ShardPlan:
    """Anti-join ``listing`` (of the normalised ``source``) with the ledger and cut shards.

    ``whole_source``: the listing is the source itself, one file or archive.
    ``members_of_archive``: the listing is the source archive's index; its members
    (nested archives included) are cut into runs like loose files.
    """
    plan = ShardPlan(source)
    cutter = _Cutter(source, settings, plan, whole_source, members_of_archive)
    for batch in _batched(listing, LOOKUP_BATCH):
        plan.listed += len(batch)
        known = ledger.lookup([uri_of(source, m, whole_source) for m in batch]) if ledger else {}
        for member in batch:
            entry = _unchanged(source, member, known, registry, whole_source, cutter.skipped)
            if entry is True:
                continue  # the sidecar of an unchanged file
            if entry is not None:
                plan.unchanged.append(entry)
            else:
                cutter.add(member)
    cutter.close()
    return plan


def uri_of(source: str, member: ListedMember, whole_source: bool = False) -> str:
    """The location a member is recorded under (``MediaItem.source_uri``)."""
    from ingest.sources.safety import MemberRejected, safe_member_path  # (a cycle otherwise)

    if whole_source:
        return source
    try:
        return join_uri(source, safe_member_path(member.name))
    except MemberRejected:
        return join_uri(source, member.name)


def _unchanged(source: str, member: ListedMember, known: dict[str, LedgerEntry],
               registry: str, whole_source: bool, skipped: set[str]) -> LedgerEntry | bool | None:
    """The ledger entry settling this object; True for the sidecar of a settled file."""
    uri = uri_of(source, member, whole_source)
    entry = known.get(uri)
    listed = Listed(uri, member.size, member.version)
    if entry is not None and entry.same_object(listed) and entry.is_final(registry):
        skipped.add(uri)
        return entry
    if member.name.lower().endswith(SIDECAR_SUFFIX) and \
            uri[: -len(SIDECAR_SUFFIX)] in skipped:
        return True
    return None


class _Cutter:
    """Groups loose files into bounded shards; each archive becomes a shard of its own."""

    def __init__(self, source: str, settings: Settings, plan: ShardPlan,
                 whole_source: bool, members_of_archive: bool = False) -> None:
        self.source, self.plan, self.whole_source = source, plan, whole_source
        self.members_of_archive = members_of_archive
        self.max_files, self.max_bytes = settings.shard_files, settings.shard_bytes
        self.open: list[ListedMember] = []
        self.open_bytes = 0
        self.skipped: set[str] = set()  # unchanged files of the open stretch (for sidecars)

    def add(self, member: ListedMember) -> None:
        from ingest.sources.readers import archive_reader

        name = self.source if self.whole_source else member.name
        if archive_reader(name) is not None and not member.problem \
                and not self.members_of_archive:
            self._emit([member], archive=True)
            return
        sidecar = member.name.lower().endswith(SIDECAR_SUFFIX)
        if self.open and not sidecar and self._full(member):
            self._flush()
        self.open.append(member)
        self.open_bytes += member.size or 0

    def _full(self, member: ListedMember) -> bool:
        return (len(self.open) >= self.max_files
                or self.open_bytes + (member.size or 0) > self.max_bytes)

    def _flush(self) -> None:
        if self.open:
            self._emit(self.open, archive=False)
            self.open, self.open_bytes = [], 0
        if len(self.skipped) > 4 * LOOKUP_BATCH:
            self.skipped.clear()  # sidecars follow their file closely in a sorted listing

    def _emit(self, members: list[ListedMember], archive: bool) -> None:
        key = "\n".join([self.source, *(m.name for m in members)])
        shard_id = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        self.plan.shards.append(Shard(shard_id, self.source, tuple(members), archive,
                                      self.whole_source))

    def close(self) -> None:
        self._flush()


def split_archive(plan: ShardPlan, settings: Settings, ledger: Ledger | None, *,
                  registry: str, index: Callable[[], Any]) -> ShardPlan:
    """A plan whose one shard is the whole source archive, with that shard replaced by
    parts read by range: the archive's index (``index()``, a ``MemberIndex``) lists the
    members, which are anti-joined and cut like loose files.

    An index that stopped early (a damaged archive, too many members) keeps the one
    shard, whose single pass reports why, as it always has.
    """
    built = index()
    if built.stopped_reason is not None:
        return plan
    listing = [ListedMember(e.name, e.size, e.mtime, e.problem, entry=e)
               for e in built.entries]
    members = plan_shards(plan.source, listing, settings, ledger, registry=registry,
                          members_of_archive=True)
    identity = (built.size, built.version)
    count = len(members.shards)
    plan.shards = [replace(s, whole_source=True, part=(i, count), identity=identity)
                   for i, s in enumerate(members.shards)]
    plan.unchanged += members.unchanged
    if not plan.shards:  # every member settled, the archive's own entry missing
        plan.settled_archive = Listed(plan.source, built.size, built.version)
        plan.archive_members = len(listing)
    return plan


def _batched(items: Iterable[ListedMember], size: int) -> Iterator[list[ListedMember]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# --- the run's manifest --------------------------------------------------------------


def write_manifest(plan: ShardPlan, path: Path) -> Path:
    """The run's manifest: one row per member of every shard still to do (Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"shard_id": s.shard_id, "archive": s.archive, "name": m.name, "size": m.size,
             "mtime": m.mtime, "etag": m.etag, "problem": m.problem}
            for s in plan.shards for m in s.members]
    schema = pa.schema([("shard_id", pa.string()), ("archive", pa.bool_()),
                        ("name", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
                        ("etag", pa.string()), ("problem", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [r["name"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
             for r in rows]
    table = pa.Table.from_pylist([r | {"name": n} for r, n in zip(rows, names, strict=True)],
                                 schema=schema)
    pq.write_table(table, path)
    return path
