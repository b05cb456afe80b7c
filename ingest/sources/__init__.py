"""Read any archive safely and stream its files as ``SourceEntry`` or ``Rejected`` records.

Sources: a single media file (recorded as its own ``archive``, with its file
name as ``member`` and its path as ``source_uri``), a local folder (recursive,
sorted), ``.tar``, ``.tar.gz``/``.tgz``, ``.zip``, and fsspec URLs (``file://``
with core fsspec; ``s3://`` and ``gs://`` need the extras ``mediabind[s3]`` /
``mediabind[gcs]``). A URL to a folder (prefix) lists it; a URL to an archive
streams the archive through fsspec's file object.

Nothing is extracted: each member is copied to a spool file (under
``settings.home / "tmp"`` unless ``spool_dir`` is given) while its sha256 is
computed; the consumer calls ``entry.release()`` (or uses ``with entry:``) when
done. Files of a local folder are read in place and not copied.

Member paths (``MediaItem.member``) are relative POSIX paths. Inside a nested
archive the path continues after ``!/``: ``shards/a.zip!/img/x.jpg`` is
``img/x.jpg`` inside ``a.zip`` inside the source, so ``source_uri`` reads
``data.tar!/shards/a.zip!/img/x.jpg``. Nested archives (.tar, .tar.gz, .tgz,
.zip members, also inside folders) are followed up to ``settings.max_nesting``.

Metadata (``MediaItem.meta``): a ``<file>.json`` member next to a file (a JSON
object; see ``sidecars.py``), overridden key by key by the row of the sidecar
manifest given as ``manifest=`` (see ``ingest.manifest``), whose ``kind``
column also overrides kind detection.

Duplicates: bytes already yielded in this run come again as
``SourceEntry(duplicate=True)`` with only the new location in
``item.locations``. Limits (``Settings.max_*``) and unsafe entries become
``Rejected`` records; see ``safety.py`` for what stops a member, an archive,
or the source.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from ingest.kinds import Detection, registry_fingerprint
from ingest.manifest import ManifestRow, load_manifest, normalise_member
from ingest.shards import ListedMember, Shard, ShardPlan, plan_shards, split_archive
from ingest.sources.members import ContainerEnd, RawMember, SourceEntry, Unchanged
from ingest.sources.readers import (
    Reader,
    archive_reader,
    folder_member,
    fsspec_member,
    iter_folder,
    iter_fsspec_folder,
    local_member,
)
from ingest.sources.safety import Budget, ContainerStopped
from ingest.sources.sidecars import attach_sidecars
from ingest.sources.stream import NESTED_SEPARATOR, RunState, iter_source_members
from schemas import Rejected, Settings, get_settings
from schemas.ledger import Ledger, Listed, version_of

__all__ = ["NESTED_SEPARATOR", "ContainerEnd", "NotOneMediaFile", "SourceEntry", "Unchanged", "iter_planned",
           "iter_shard", "iter_source", "normalise_source", "plan_source", "read_local_file"]

# The optional extra that provides each fsspec protocol we document.
PROTOCOL_EXTRAS: dict[str, str] = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def iter_source(source: str | Path, settings: Settings | None = None,
                manifest: str | Path | None = None, *,
                spool_dir: str | Path | None = None, ledger: Ledger | None = None,
                ) -> Iterator[SourceEntry | Rejected | Unchanged | ContainerEnd]:
    """Stream the files of ``source``: ``plan_source``, then every shard's members.

    With a ``ledger``, listed objects it holds as settled and unchanged come as
    ``Unchanged`` and are not read; each archive listed at the top (the source
    archive, or one in a folder) ends with a ``ContainerEnd``.

    Raises at once (not as Rejected) for user errors: a missing source
    (FileNotFoundError), a file that is no supported archive (ValueError), a
    URL whose filesystem is not installed (ImportError naming the extra), an
    invalid manifest (ManifestError).
    """
    settings = settings or get_settings()
    plan = plan_source(source, settings, ledger)
    return iter_planned(plan, settings, manifest, spool_dir=spool_dir,
                        record_containers=ledger is not None)


class NotOneMediaFile(ValueError):
    """A file given as one media item is none: an archive, empty, of no kind we read."""


@contextmanager
def read_local_file(path: str | Path, settings: Settings) -> Iterator[SourceEntry]:
    """One local media file read as ingestion reads a source of one file (``iter_source``:
    the same safety checks, sha256 and kind detection, its probe kept for the decoder), for
    the callers that take a single file: query inputs, binding targets. The entry lives
    for the ``with`` block; ``NotOneMediaFile`` says why the file is not one media item (an
    archive, an empty or unknown file: ingestion's own rejection reason)."""
    path = Path(path)
    if not path.is_file():  # a folder would be read as a source of many
        raise NotOneMediaFile(f"{path.name!r} is not a file")
    if archive_reader(str(path)) is not None:
        raise NotOneMediaFile(f"{path.name!r} is an archive; one media file is wanted here")
    with closing(iter_source(path, settings)) as outputs:
        yield from _one_entry(path, outputs)


def _one_entry(path: Path, outputs: Iterator[Any]) -> Iterator[SourceEntry]:
    for out in outputs:
        if isinstance(out, SourceEntry):
            with out:
                yield out
            return
        if isinstance(out, Rejected):
            raise NotOneMediaFile(f"{path.name!r}: {out.reason}")
    raise NotOneMediaFile(f"{path.name!r} holds no media item (a sidecar JSON?)")


def iter_planned(plan: ShardPlan, settings: Settings, manifest: str | Path | None = None, *,
                 spool_dir: str | Path | None = None, record_containers: bool = True,
                 ) -> Iterator[SourceEntry | Rejected | Unchanged | ContainerEnd]:
    """What a plan settled (``Unchanged``), then the members of each of its shards."""
    rows = load_manifest(manifest) if manifest is not None else {}
    return _planned(plan, settings, rows, spool_dir, record_containers)


def _planned(plan: ShardPlan, settings: Settings, rows: dict[str, ManifestRow],
             spool_dir: str | Path | None, record_containers: bool,
             ) -> Iterator[SourceEntry | Rejected | Unchanged | ContainerEnd]:
    yield from (Unchanged(entry) for entry in plan.unchanged)
    yield from settled_archive_end(plan)
    seen: dict[str, Detection] = {}  # the same bytes in two shards are one item
    for shard in plan.shards:
        yield from iter_shard(shard, settings, rows, spool_dir=spool_dir, seen=seen,
                              record_containers=record_containers)


@dataclass(frozen=True, slots=True)
class SourceListing:
    """What listing a source found, no content read: its objects, and whether the source
    is one object (a single file or an archive: its own shard)."""

    whole_source: bool
    members: Iterable[ListedMember]


def list_source(source: str | Path, settings: Settings) -> SourceListing:
    """List ``source``: ``os.scandir`` for a folder, ``fs.find`` (prefixes in parallel) for
    a URL prefix, the object's own size for a single file or an archive. Lazy for a
    folder or prefix: the members come as the listing goes."""
    archive = normalise_source(source)
    single = _single_file(archive)
    if single is not None:  # one media file: its own archive, its file name the member
        return SourceListing(True, [listed(folder_member(single))])
    container = listed_archive(source)
    if container is not None:  # the source archive is one shard
        return SourceListing(True, [ListedMember("", container.size, None,
                                                 etag=container.version)])
    return SourceListing(False, (listed(m) for m in open_source(source,
                                                                settings.max_compression_ratio)))


IndexBuilder = Callable[[str, Settings], Any]  # (source, settings) → member_index.MemberIndex


def plan_source(source: str | Path, settings: Settings | None = None,
                ledger: Ledger | None = None, listing: SourceListing | None = None,
                index_with: IndexBuilder | None = None) -> ShardPlan:
    """Anti-join a listing (``list_source``, unless given: a Ray run lists in a task) with
    the ledger and cut shards (``ingest.shards``); no content is read.

    A source that is one .tar or .zip and not settled is split into parts read by range
    (``ingest.shards.split_archive``); its index is built by ``index_with`` (a Ray run:
    a task on a worker), else here (``index_archive``).
    """
    settings = settings or get_settings()
    listing = listing if listing is not None else list_source(source, settings)
    archive, registry = normalise_source(source), registry_fingerprint(settings.home)
    plan = plan_shards(archive, listing.members, settings, ledger, registry=registry,
                       whole_source=listing.whole_source)
    if len(plan.shards) == 1 and plan.shards[0].archive and plan.shards[0].whole_source \
            and splittable(archive):
        build = index_with or index_archive
        listed = plan.shards[0].members[0]
        plan = split_archive(plan, settings, ledger, registry=registry,
                             index=lambda: kept_index(archive, listed, settings,
                                                      lambda: build(archive, settings)))
    return plan


def kept_index(archive: str, listed: ListedMember, settings: Settings,
               build: Callable[[], Any]) -> Any:
    """The archive's member index: the one kept under ``HOME/indexes`` when it describes
    the version listed now, else built and, when complete, kept for the next plan (a
    run cut short, or a rerun with members left to retry, does not index it again)."""
    from ingest.member_index import read_index

    path = kept_index_path(archive, settings)
    if path.is_file():
        try:
            kept = read_index(str(path))
        except (OSError, ValueError, pa.ArrowException):
            kept = None  # damaged, or of an older layout: built again below
        if kept is not None and kept.stopped_reason is None \
                and (kept.size, kept.version) == (listed.size, listed.version):
            return kept
    index = build()
    if index.stopped_reason is None:
        _keep(index, path)
    return index


def _keep(index: Any, path: Path) -> None:
    """Best effort: a HOME that cannot take the file costs the next plan an indexing."""
    import logging
    import tempfile

    from ingest.member_index import write_index

    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            temporary = Path(tmp.name)
        write_index(index, str(temporary))
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        logging.getLogger(__name__).warning("could not keep the member index of %s at %s "
                                            "(%s); the next plan indexes it again",
                                            index.uri, path, exc)


def open_indexed_member(archive: str, member: str, settings: Settings) -> BinaryIO | None:
    """One member of a source .tar/.zip, read by range through the archive's kept index
    (``kept_index``) when that index describes the archive as it is now; None when
    there is no such index or it lists no such member (read the archive through then).
    MemberRejected for a member the index refused."""
    from ingest.member_index import archive_identity, open_member, read_index
    from ingest.sources.safety import recorded_name

    path = kept_index_path(archive, settings)
    if not splittable(archive) or not path.is_file():
        return None
    try:
        index = read_index(str(path))
    except (OSError, ValueError, pa.ArrowException):
        return None
    fs, at = _archive_fs(archive)
    if (index.size, index.version) != archive_identity(fs, at):
        return None  # the archive changed since it was indexed
    entry = next((e for e in index.entries if recorded_name(e.name) == member), None)
    if entry is None:
        return None
    return open_member(fs, at, entry, max_compression_ratio=settings.max_compression_ratio)


def kept_index_path(archive: str, settings: Settings) -> Path:
    """Per archive and per limits that shape the index (its members' verdicts, its end)."""
    limits = hashlib.sha256(f"{settings.max_members}|{settings.max_compression_ratio}"
                            .encode()).hexdigest()[:8]
    return settings.home / "indexes" / f"{source_key(archive)}-{limits}.parquet"


def splittable(archive: str) -> bool:
    """An archive whose members can be read by range: .tar or .zip, not compressed."""
    from ingest.member_index import indexable

    return indexable(archive)


def index_archive(archive: str, settings: Settings) -> Any:
    """The member-offset index of the source archive (headers and directory only)."""
    from ingest.member_index import build_index

    fs, path = _archive_fs(archive)
    return build_index(fs, path, max_members=settings.max_members,
                       max_compression_ratio=settings.max_compression_ratio)


def _archive_fs(archive: str) -> tuple[Any, str]:
    if "://" in archive:
        return _filesystem(archive)
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), archive


def settled_archive_end(plan: ShardPlan) -> Iterator[ContainerEnd]:
    """The end of a source archive whose members are all settled, to record it as one."""
    if plan.settled_archive is not None:
        yield ContainerEnd(plan.settled_archive, plan.archive_members, True)


def iter_shard(shard: Shard, settings: Settings, rows: dict[str, ManifestRow] | None = None, *,
               spool_dir: str | Path | None = None, seen: dict[str, Detection] | None = None,
               record_containers: bool = True) -> Iterator[SourceEntry | Rejected | ContainerEnd]:
    """Read one shard's members where they are: safety checks, spool + sha256, kind.

    Only the shard's own objects are opened. An archive shard has its own
    limits; a run of loose files is bounded one file at a time.
    """
    spool_path = Path(spool_dir) if spool_dir is not None else settings.home / "tmp"
    spool_path.mkdir(parents=True, exist_ok=True)
    # The source archive, read whole or one part of it by range: its limits hold per shard.
    source_archive = shard.whole_source and (shard.archive or shard.part is not None)
    budget = Budget.from_settings(settings) if source_archive else Budget.unlimited()
    state = RunState(shard.source, settings, spool_path,
                     {normalise_member(k): v for k, v in (rows or {}).items()}, budget,
                     seen if seen is not None else {},
                     single_file=shard.whole_source and not source_archive,
                     record_containers=record_containers,
                     container=_container_of(shard) if source_archive else None,
                     part=shard.part)
    return attach_sidecars(iter_source_members(state, _shard_members(shard, settings)))


def _shard_members(shard: Shard, settings: Settings) -> Generator[RawMember, None, None]:
    if shard.part is not None:
        return _ranged(shard, settings)
    if shard.whole_source and shard.archive:
        return open_source(shard.source, settings.max_compression_ratio)
    if shard.whole_source:
        return _one(folder_member(Path(shard.source)))
    return _reopened(shard)


def _ranged(shard: Shard, settings: Settings) -> Generator[RawMember, None, None]:
    """One part of the source archive: its members fetched by range, as the index said."""
    from ingest.member_index import member_record

    fs, path = _archive_fs(shard.source)
    _check_identity(fs, path, shard)
    for m in shard.members:
        yield member_record(fs, path, m.entry, settings.max_compression_ratio)
    _check_identity(fs, path, shard)  # changed while read: this part is not complete


def _check_identity(fs: Any, path: str, shard: Shard) -> None:
    from ingest.member_index import archive_identity

    now = archive_identity(fs, path)
    if now != shard.identity:  # offsets into another version would read the wrong bytes
        raise ContainerStopped(f"archive changed since it was indexed (size, version "
                               f"{shard.identity} -> {now}); the next run indexes it again")


def _container_of(shard: Shard) -> Listed | None:
    """The source archive as the part's index saw it (so every part names one version),
    or as it is now when it is read whole."""
    if shard.identity is not None:
        return Listed(shard.source, *shard.identity)
    return listed_archive(shard.source)


def listed(raw: RawMember) -> ListedMember:
    """What a reader's entry tells about an object, before it is opened."""
    return ListedMember(raw.name, raw.size, raw.mtime, raw.problem)


def _reopened(shard: Shard) -> Generator[RawMember, None, None]:
    """The shard's loose files (or its one archive) reopened from the listing."""
    if "://" in shard.source:
        fs, root = _filesystem(shard.source)
        if not _is_local(fs):
            for m in shard.members:
                yield fsspec_member(fs, root, m.name, m.size, m.mtime)
            return
        base = Path(root)
    else:
        base = Path(shard.source)
    for m in shard.members:
        yield local_member(base, m.name)


def listed_archive(source: str | Path) -> Listed | None:
    """The source as one listed object when it is an archive (None for a folder or prefix)."""
    archive = normalise_source(source)
    if archive_reader(archive) is None:
        return None
    if "://" in archive:
        fs, root = _filesystem(archive)
        info = fs.info(root)
        if info.get("type") == "directory":
            return None
        version = info.get("ETag") or info.get("etag") or version_of(_info_mtime(info))
        return Listed(archive, info.get("size"), str(version) if version else None)
    path = Path(archive)
    if not path.is_file():
        return None
    stat = path.stat()
    return Listed(archive, stat.st_size, version_of(stat.st_mtime))


def _info_mtime(info: dict[str, Any]) -> float | None:
    from ingest.sources.readers import fsspec_mtime

    return fsspec_mtime(info)


def normalise_source(source: str | Path) -> str:
    """How a source is recorded (``MediaItem.archive``): local paths absolute without a
    trailing slash, URLs as given minus a trailing slash. Every caller (CLI, flows,
    prune) records and matches sources in this one form."""
    text = str(source)
    if "://" in text and not text.startswith("file://"):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def source_key(source: str) -> str:
    """A short fixed name for a source (its lock, its staged output, its manifest record)."""
    return hashlib.sha256(normalise_source(source).encode()).hexdigest()[:16]


def _one(member: RawMember) -> Generator[RawMember, None, None]:
    yield member


def _single_file(archive: str) -> Path | None:
    """A local regular file that is not an archive: a source of one item."""
    if "://" in archive:
        return None
    path = Path(archive)
    return path if path.is_file() and archive_reader(archive) is None else None


def open_source(source: str | Path, max_ratio: float) -> Generator[RawMember, None, None]:
    """The members of a local or fsspec source; checks it exists before streaming."""
    text = str(source)
    if "://" in text:
        return _open_url(text, max_ratio)
    path = Path(source)
    if path.is_dir():
        return iter_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    reader = _require_archive(text)
    return _read_archive(lambda: path.open("rb"), reader, max_ratio)


def _open_url(url: str, max_ratio: float) -> Generator[RawMember, None, None]:
    fs, root = _filesystem(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"source not found: {url}")
    if fs.isdir(root):
        if _is_local(fs):  # same safety as a local folder (links reported, not followed)
            return iter_folder(Path(root))
        return iter_fsspec_folder(fs, root)
    reader = _require_archive(url)
    return _read_archive(lambda: fs.open(root, "rb"), reader, max_ratio)


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        extra = PROTOCOL_EXTRAS.get(protocol)
        hint = f"pip install 'mediabind[{extra}]'" if extra else "install its fsspec backend"
        raise ImportError(f"reading {protocol}:// sources needs an optional package: {hint} "
                          f"({exc})") from exc


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _require_archive(name: str) -> Reader:
    reader = archive_reader(name)
    if reader is None:
        raise ValueError(f"not a folder or a supported archive (.tar, .tar.gz, .tgz, .zip): "
                         f"{name}")
    return reader


def _read_archive(opener: Callable[[], BinaryIO], reader: Reader,
                  max_ratio: float) -> Generator[RawMember, None, None]:
    # Opened lazily and closed when the stream ends or is closed early.
    try:
        fileobj = opener()
    except OSError as exc:
        raise ContainerStopped(f"cannot open the archive: {exc}") from exc
    with fileobj:
        yield from reader(fileobj, max_ratio)
