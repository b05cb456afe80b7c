"""A member-offset index of one large .tar or .zip, so that it can be split into shards
whose members are read by range, in parallel, from any fsspec filesystem.

- tar: tarfile's own parser (seekable ``r:`` mode) hops from header to header over a
  file that fetches by range, so pax headers and GNU long names are handled and member
  data is never fetched: only headers, one small read-ahead block per hop;
- zip: the central directory, read once;
- .tar.gz/.tgz: a compressed stream cannot be entered in the middle. It stays one shard,
  read by ``ingest.sources`` in one pass, and gets no index (``indexable`` says which).

The verdicts are the readers' own (``ingest.sources.readers``): the same problem text for
links, devices, encrypted or over-compressed members. Names are kept as written, for
``safe_member_path`` to judge in the member pipeline, as for a whole archive; directory
entries are left out as the readers leave them out. ``raw_members`` hands one shard to
that pipeline (``ingest.sources.stream.iter_container``).
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.range_reads import (
    LOCAL_HEADER_SIZE,
    MEMBER_BLOCK,
    ZIP_UTF8_NAME,
    RangeFile,
    ZipMember,
    open_zip_member,
)
from ingest.sources import normalise_source
from ingest.sources.members import READ_ERRORS, RawMember
from ingest.sources.readers import (
    TAR_TYPES,
    empty_safe_folder,
    fsspec_mtime,
    zip_mtime,
    zip_problem,
)
from ingest.sources.safety import ContainerStopped, MemberRejected
from schemas import Settings
from schemas.ledger import version_of

# One fetch per tar header hop: it also covers a pax header and runs of small members
# (and, in a zip, the end records and a small central directory).
HEADER_BLOCK = 64 << 10
INDEX_FORMAT = 1  # the Parquet layout; a file of another layout is refused, not misread
DEFAULT_MAX_RATIO: float = Settings.model_fields["max_compression_ratio"].default

_FORMATS = {".tar": "tar", ".zip": "zip"}
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                      b"\x28\xb5\x2f\xfd": "zstd"}
_METADATA_KEY = b"mediabind.member_index"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One member as its archive describes it.

    ``offset``: a tar member's first data byte; a zip member's local header.
    ``compressed_size``: bytes it occupies in the archive (a tar member's ``size``).
    ``method``: the zip compression method (0 stored, 8 deflate, 12 bzip2, 14 lzma).
    ``crc``: the zip CRC-32 (None in a tar, which has none).
    ``problem``: the reader's verdict (a link, a device, a bomb): rejected, never opened.
    """

    name: str
    offset: int
    size: int
    compressed_size: int
    mtime: float | None
    problem: str | None = None
    method: int = zipfile.ZIP_STORED
    crc: int | None = None

    @property
    def bytes_to_read(self) -> int:
        """What a worker reads (decompressed) for this entry: nothing when it is refused."""
        return 0 if self.problem else self.size


@dataclass(frozen=True)
class MemberIndex:
    """Every member of one archive, built once (``build_index``) and kept as Parquet.

    ``size`` and ``version`` (ETag, else mtime) identify the archive it describes;
    ``stopped_reason``: why indexing ended before the archive's end (None: complete);
    ``bytes_read``: how many bytes of the archive indexing fetched.
    """

    uri: str
    archive_format: str
    size: int
    version: str | None
    entries: tuple[IndexEntry, ...]
    stopped_reason: str | None
    bytes_read: int


def archive_format(path: str) -> str | None:
    """"tar" or "zip" when the archive's members can be read by range, else None."""
    lower = path.lower()
    return next((fmt for ext, fmt in _FORMATS.items() if lower.endswith(ext)), None)


def indexable(path: str) -> bool:
    """Whether this archive can be indexed and split (.tar, .zip; not .tar.gz or .tgz)."""
    return archive_format(path) is not None


# --- building the index --------------------------------------------------------------

def build_index(fs: Any, path: str, *, max_members: int,
                max_compression_ratio: float) -> MemberIndex:
    """The member index of a .tar or .zip on ``fs``; ValueError for any other archive.

    A damaged archive or one of more than ``max_members`` members gives an index that
    keeps what came before and says why it stopped.
    """
    fmt = archive_format(path)
    if fmt is None:
        raise ValueError(f"only a .tar or .zip can be indexed and read by range: {path!r} "
                         "is read as one shard")
    size, version = archive_identity(fs, path)
    source = RangeFile(fs, path, 0, size, HEADER_BLOCK)
    if fmt == "tar":
        entries, reason = _index_tar(source, max_members)
    else:
        entries, reason = _index_zip(source, max_members, max_compression_ratio)
    uri = normalise_source(fs.unstrip_protocol(path))
    return MemberIndex(uri, fmt, size, version, tuple(entries), reason, source.fetched)


def archive_identity(fs: Any, path: str) -> tuple[int, str | None]:
    """Size and version (ETag, else mtime) of the archive, as the ledger knows objects."""
    info = fs.info(path)
    version = info.get("ETag") or info.get("etag") or version_of(fsspec_mtime(info))
    return int(info["size"]), (str(version) if version else None)


def _too_many(max_members: int) -> str:
    # Worded as Budget.count_member words it: the same limit, met earlier.
    return f"archive has more than max_members={max_members} files; stopped reading it"


def _index_tar(source: RangeFile, max_members: int) -> tuple[list[IndexEntry], str | None]:
    entries: list[IndexEntry] = []
    try:
        archive = _open_seekable_tar(source)
    except READ_ERRORS as exc:
        return entries, _unreadable_tar(source, exc)
    with archive:
        return entries, _walk_tar(archive, source, entries, max_members)


def _open_seekable_tar(source: RangeFile) -> tarfile.TarFile:
    # "r:" (plain, seekable): tarfile seeks over member data instead of reading it.
    return tarfile.open(fileobj=source, mode="r:")  # type: ignore[call-overload]


def _unreadable_tar(source: RangeFile, exc: BaseException) -> str:
    source.seek(0)
    head = source.read(6)
    compressed = next((c for magic, c in _COMPRESSION_MAGIC.items() if head.startswith(magic)),
                      None)
    if compressed is not None:
        return (f"a {compressed}-compressed tar cannot be entered by range; "
                "read it as one shard")
    return f"not a readable tar archive: {exc}"


def _walk_tar(archive: tarfile.TarFile, source: RangeFile, entries: list[IndexEntry],
              max_members: int) -> str | None:
    """Index member headers into ``entries``: why it stopped early, or None at the end."""
    while True:
        try:
            info = archive.next()
        except READ_ERRORS as exc:
            return f"archive truncated or corrupt, stopped reading: {exc}"
        archive.members.clear()  # tarfile keeps every header it read; we keep ours
        if info is None:
            return _tar_end_problem(archive.offset, source)
        if info.isdir():
            continue
        if info.offset_data + _stored_bytes(info) > source.end:
            return (f"archive truncated or corrupt, stopped reading: {info.name!r} "
                    "runs past the end of the archive")
        if len(entries) == max_members:
            return _too_many(max_members)
        entries.append(IndexEntry(info.name, info.offset_data, info.size, _stored_bytes(info),
                                  float(info.mtime), _tar_problem(info)))


def _stored_bytes(info: tarfile.TarInfo) -> int:
    """Data bytes after the header (tarfile's rule). A sparse member stores fewer bytes
    than its size, and is refused anyway."""
    if info.sparse is not None:
        return 0
    return info.size if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES else 0


def _tar_problem(info: tarfile.TarInfo) -> str | None:
    # Worded as readers._tar_member words it, so a shard rejects what a whole pass would.
    if info.issym() or info.islnk():
        return f"{TAR_TYPES[info.type]} to {info.linkname!r} (links are never followed)"
    if not info.isreg():
        return f"not a regular file ({TAR_TYPES.get(info.type, f'tar type {info.type!r}')})"
    if info.sparse is not None:
        return "sparse file (its stored bytes are not its content; not read by range)"
    return None


def _tar_end_problem(offset: int, source: RangeFile) -> str | None:
    """tarfile ends quietly at a cut or damaged header (anywhere but the first): only
    the end-of-archive marker, a zero block that every tar writer puts there, is an end."""
    source.seek(offset)
    try:
        block = source.read(tarfile.BLOCKSIZE)
    except EOFError:
        block = b""
    where = f"at byte {offset}"
    if block == bytes(tarfile.BLOCKSIZE):
        return None
    if not block:
        return f"archive truncated, stopped reading: it ends {where} without its end marker"
    if len(block) < tarfile.BLOCKSIZE:
        return f"archive truncated or corrupt, stopped reading: a cut header {where}"
    return f"archive truncated or corrupt, stopped reading: invalid header {where}"


def _index_zip(source: RangeFile, max_members: int,
               max_ratio: float) -> tuple[list[IndexEntry], str | None]:
    try:
        archive = zipfile.ZipFile(source)
    except READ_ERRORS as exc:
        return [], f"not a readable zip archive: {exc}"
    with archive:
        everything = archive.infolist()
        overlapping = _overlapping(everything, archive.start_dir)
    members = [i for i in everything if not (i.is_dir() and empty_safe_folder(i))]
    entries = [_zip_entry(info, max_ratio, id(info) in overlapping)
               for info in members[:max_members]]
    return entries, _too_many(max_members) if len(members) > max_members else None


def _zip_entry(info: zipfile.ZipInfo, max_ratio: float, overlaps: bool) -> IndexEntry:
    problem = zip_problem(info, max_ratio)
    if problem is None and overlaps:
        problem = "zip member overlaps the next one (overlapping entries: a zip bomb?)"
    return IndexEntry(info.filename, info.header_offset, info.file_size, info.compress_size,
                      zip_mtime(info), problem, info.compress_type, info.CRC)


def _overlapping(infos: list[zipfile.ZipInfo], directory_start: int) -> set[int]:
    """ids of members whose bytes run into the next member's or the central directory.
    Overlapping entries let one small kernel expand once per entry; newer zipfile
    releases refuse them ("Overlapped entries"), the Python 3.11 used here does not."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    bounds = [info.header_offset for info in ordered[1:]] + [directory_start]
    return {id(info) for info, bound in zip(ordered, bounds, strict=True)
            if _least_end(info) > bound}


def _least_end(info: zipfile.ZipInfo) -> int:
    # The local header repeats the name; its extra field (unknown here) only adds.
    encoding = "utf-8" if info.flag_bits & ZIP_UTF8_NAME else "cp437"
    name = info.orig_filename.encode(encoding, errors="replace")
    return info.header_offset + LOCAL_HEADER_SIZE + len(name) + info.compress_size


# --- shards ----------------------------------------------------------------------------

def split(index: MemberIndex, max_members: int, max_bytes: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) entry ranges of at most ``max_members`` entries and
    ``max_bytes`` bytes to read (``IndexEntry.bytes_to_read``); an entry larger than
    ``max_bytes`` gets a range of its own. An index that stopped before its first
    entry gets one empty range, so that the shard that runs it reports why."""
    if max_members < 1 or max_bytes < 1:
        raise ValueError("max_members and max_bytes must be at least 1")
    if not index.entries:
        return [(0, 0)] if index.stopped_reason else []
    ranges, start, members, taken = [], 0, 0, 0
    for i, entry in enumerate(index.entries):
        if members and (members == max_members or taken + entry.bytes_to_read > max_bytes):
            ranges.append((start, i))
            start, members, taken = i, 0, 0
        members += 1
        taken += entry.bytes_to_read
    ranges.append((start, len(index.entries)))
    return ranges


def raw_members(fs: Any, path: str, index: MemberIndex, start: int, end: int, *,
                max_compression_ratio: float = DEFAULT_MAX_RATIO,
                ) -> Generator[RawMember, None, None]:
    """Entries [start, end) of an indexed archive as the member pipeline's records.

    Entries are independent (``sequential=False``); one the index refused keeps its
    problem. ContainerStopped when the archive changed since it was indexed, and, after
    the last indexed entry, when indexing stopped early (so the shard reports it).
    """
    if not 0 <= start <= end <= len(index.entries):
        raise ValueError(f"range [{start}, {end}) is not within the index's "
                         f"{len(index.entries)} entries")
    _check_unchanged(fs, path, index)
    for entry in index.entries[start:end]:
        yield member_record(fs, path, entry, max_compression_ratio)
    if end == len(index.entries) and index.stopped_reason:
        raise ContainerStopped(index.stopped_reason)


def _check_unchanged(fs: Any, path: str, index: MemberIndex) -> None:
    # Offsets into another version of the archive would read the wrong bytes.
    size, version = archive_identity(fs, path)
    if (size, version) != (index.size, index.version):
        raise ContainerStopped(f"archive changed since it was indexed (size {index.size} -> "
                               f"{size}, version {index.version} -> {version}); index it again")


def member_record(fs: Any, path: str, entry: IndexEntry, max_ratio: float) -> RawMember:
    """One indexed member as the member pipeline's record, opened by range when read."""

    def opener() -> BinaryIO:
        return open_member(fs, path, entry, max_compression_ratio=max_ratio)

    return RawMember(entry.name, entry.size, entry.mtime, None if entry.problem else opener,
                     entry.problem, sequential=False, read_error=MemberRejected)


# --- one member --------------------------------------------------------------------------

def open_member(fs: Any, path: str, entry: IndexEntry, *,
                max_compression_ratio: float = DEFAULT_MAX_RATIO) -> BinaryIO:
    """A reader of exactly this member's bytes, fetched by range: a tar member's stored
    bytes, or a zip member's decompressed ones (checked against its header, its CRC and
    the compression ratio). MemberRejected for an entry the index refused."""
    if entry.problem:
        raise MemberRejected(entry.problem)
    fmt = archive_format(path)
    if fmt == "tar":
        end = entry.offset + entry.size
        return RangeFile(fs, path, entry.offset, end, MEMBER_BLOCK)  # type: ignore[return-value]
    if fmt == "zip":
        member = ZipMember(entry.name, entry.offset, entry.size, entry.compressed_size,
                           entry.method, entry.crc or 0)
        reader = open_zip_member(fs, path, member, max_compression_ratio)
        return reader  # type: ignore[return-value]
    raise ValueError(f"not an archive read by range: {path!r}")


# --- Parquet -----------------------------------------------------------------------------

# Names are bytes: a tar name that is not UTF-8 reaches Python with lone surrogates,
# which no Parquet string can hold; surrogateescape gives back the name as written.
_ENTRY_SCHEMA = pa.schema([
    ("name", pa.binary()), ("offset", pa.int64()), ("size", pa.int64()),
    ("compressed_size", pa.int64()), ("mtime", pa.float64()), ("problem", pa.string()),
    ("method", pa.int32()), ("crc", pa.int64()),
])


def write_index(index: MemberIndex, where: str, fs: Any = None) -> None:
    """Write ``index`` as one Parquet file at a path or URL (or a path on ``fs``)."""
    fs, where = _target(where, fs)
    with fs.open(where, "wb") as out:
        pq.write_table(_to_table(index), out)


def read_index(where: str, fs: Any = None) -> MemberIndex:
    """The index that ``write_index`` wrote at ``where``."""
    fs, where = _target(where, fs)
    with fs.open(where, "rb") as source:
        table = pq.read_table(source)
    about = _about(table, where)
    rows = table.to_pylist()
    for row in rows:
        row["name"] = row["name"].decode("utf-8", "surrogateescape")
    return MemberIndex(**about, entries=tuple(IndexEntry(**row) for row in rows))


def _about(table: pa.Table, where: str) -> dict[str, Any]:
    """The archive-level fields kept in the file's metadata."""
    metadata = table.schema.metadata or {}
    if _METADATA_KEY not in metadata:
        raise ValueError(f"{where}: not a member index")
    about = json.loads(metadata[_METADATA_KEY])
    if about.pop("index_format") != INDEX_FORMAT:
        raise ValueError(f"{where}: a member index of another layout; build it again")
    return about


def _target(where: str, fs: Any) -> tuple[Any, str]:
    if fs is not None:
        return fs, where
    import fsspec

    return fsspec.core.url_to_fs(where)


def _to_table(index: MemberIndex) -> pa.Table:
    columns = {name: [getattr(e, name) for e in index.entries] for name in _ENTRY_SCHEMA.names}
    columns["name"] = [name.encode("utf-8", "surrogateescape") for name in columns["name"]]
    about = {"index_format": INDEX_FORMAT, "uri": index.uri,
             "archive_format": index.archive_format, "size": index.size,
             "version": index.version, "stopped_reason": index.stopped_reason,
             "bytes_read": index.bytes_read}
    schema = _ENTRY_SCHEMA.with_metadata({_METADATA_KEY: json.dumps(about)})
    return pa.table(columns, schema=schema)
