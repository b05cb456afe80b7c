"""Readers: each turns one container into a stream of ``RawMember`` records.

- folders (local): recursive, sorted by path; links and special files are
  reported, never followed; files are read in place (no spool copy);
- fsspec folders (``memory://``, ``s3://`` prefixes...): ``fs.find``, sorted;
- tar, tar.gz, tgz: one forward pass in stream mode (``r|*``); the expansion of
  a compressed stream is measured against the compressed bytes consumed;
- zip: the central directory, then one member at a time; declared sizes are
  checked before reading, real bytes while reading.
"""

from __future__ import annotations

import calendar
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ingest.sources.members import READ_ERRORS, RawMember
from ingest.sources.safety import ContainerStopped, MemberRejected, check_ratio, safe_member_path

Reader = Callable[[BinaryIO, float], Iterator[RawMember]]


# --- local folders -----------------------------------------------------------------

def iter_folder(root: Path) -> Iterator[RawMember]:
    """Every entry under ``root`` in sorted path order; symlinks are not followed."""
    yield from _walk(str(root), "")


def _walk(folder: str, prefix: str) -> Iterator[RawMember]:
    # Plain strings, not pathlib: planning lists every file of a source this way.
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, name + "/")
        else:
            yield _member_of(name, Path(entry.path), entry.stat(follow_symlinks=False))


def local_member(root: Path, name: str) -> RawMember:
    """A file listed earlier under ``root``, stat'ed again now that it is read."""
    path = root / name
    try:
        return _member_of(name, path, path.lstat())
    except OSError as exc:  # gone (or unreadable) since it was listed
        return RawMember(name, None, None, None, f"cannot read a listed file: {exc}")


def folder_member(path: Path) -> RawMember:
    """One file given on its own (a single-file source), named by its file name."""
    return _member_of(path.name, path, path.lstat())


def _member_of(name: str, path: Path, info: os.stat_result) -> RawMember:
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = f"symbolic link to {os.readlink(path)!r} (links are never followed)"
    elif not stat.S_ISREG(info.st_mode):
        problem = f"not a regular file ({_file_type(info.st_mode)})"
    return RawMember(name, info.st_size, info.st_mtime, lambda: path.open("rb"), problem,
                     local_path=path)


def _file_type(mode: int) -> str:
    checks = {stat.S_ISFIFO: "fifo", stat.S_ISCHR: "character device",
              stat.S_ISBLK: "block device", stat.S_ISSOCK: "socket"}
    return next((name for test, name in checks.items() if test(mode)), "special file")


# --- fsspec folders ----------------------------------------------------------------

LISTING_THREADS = 8  # prefixes listed at once: an object store answers each in round trips


def iter_fsspec_folder(fs: Any, root: str) -> Iterator[RawMember]:
    """Every file under ``root`` of an fsspec filesystem, sorted by path.

    The prefixes right under ``root`` are listed in parallel (one ``find`` each),
    since listing a large bucket is a long series of paged requests per prefix.
    """
    found = _find_in_parallel(fs, root)
    base = root.rstrip("/") + "/"
    for path in sorted(found):
        info = found[path]
        yield RawMember(path[len(base):] if path.startswith(base) else path,
                        info.get("size"), fsspec_mtime(info),
                        lambda p=path: fs.open(p, "rb"))


def _find_in_parallel(fs: Any, root: str) -> dict[str, dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    top = fs.ls(root, detail=True)
    files = {e["name"]: e for e in top if e.get("type") != "directory"}
    prefixes = [e["name"] for e in top if e.get("type") == "directory"]
    with ThreadPoolExecutor(min(LISTING_THREADS, max(len(prefixes), 1))) as pool:
        for part in pool.map(lambda p: fs.find(p, withdirs=False, detail=True), prefixes):
            files.update(part)
    return files


def fsspec_member(fs: Any, root: str, name: str, size: int | None,
                  mtime: float | None) -> RawMember:
    """An object listed earlier under ``root`` (as ``iter_fsspec_folder`` names it)."""
    path = root.rstrip("/") + "/" + name
    return RawMember(name, size, mtime, lambda: fs.open(path, "rb"))


def fsspec_mtime(info: dict[str, Any]) -> float | None:
    value = info.get("mtime", info.get("LastModified", info.get("updated")))
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


# --- tar streams -------------------------------------------------------------------

class CountingReader:
    """Counts the raw (compressed) bytes tarfile pulls from the underlying file."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


TAR_TYPES: dict[bytes, str] = {
    tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}


def iter_tar(fileobj: BinaryIO, max_ratio: float) -> Iterator[RawMember]:
    """Members of a (possibly compressed) tar, in one forward pass."""
    counted = CountingReader(fileobj)
    archive = _open_tar(counted)
    with archive:
        while (info := _next_tar(archive)) is not None:
            _check_stream_ratio(info.offset, counted, max_ratio)
            if not info.isdir():
                yield _tar_member(archive, info, counted, max_ratio)
            # tarfile keeps every header it has read; a forward pass needs none of them
            # back, and a tar of many members would otherwise grow memory per member.
            archive.members.clear()


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile takes a damaged header after the first member (a bad checksum, a header
    cut short) for the end of the archive, and every member after it would vanish
    unreported. Here it is damage: the pass stops with the reason. A zero block, the
    archive's real end marker, still ends it."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        # A run of zeros shorter than a block, where the file ends: the end-marker of an
        # archive cut in its padding, as tarfile itself reads it; not a damaged header.
        if 0 < len(buf) < tarfile.BLOCKSIZE and not buf.strip(b"\0"):
            raise tarfile.EOFHeaderError("end of file header")
        return super().frombuf(buf, encoding, errors)

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            raise tarfile.SubsequentHeaderError(
                f"damaged header at byte {tarfile_.offset} ({exc})") from exc


def _open_tar(counted: CountingReader) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=counted, mode="r|*",  # type: ignore[call-overload]
                            tarinfo=_StrictTarInfo)
    except READ_ERRORS as exc:
        raise ContainerStopped(f"not a readable tar archive: {exc}") from exc


def _next_tar(archive: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return archive.next()
    except READ_ERRORS as exc:
        raise ContainerStopped(f"archive truncated or corrupt, stopped reading: {exc}") from exc


def _tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo, counted: CountingReader,
                max_ratio: float) -> RawMember:
    problem = None
    if info.issym() or info.islnk():
        problem = f"{TAR_TYPES[info.type]} to {info.linkname!r} (links are never followed)"
    elif not info.isreg():
        problem = f"not a regular file ({TAR_TYPES.get(info.type, f'tar type {info.type!r}')})"
    # Only regular files have content in the stream (extractfile gives None otherwise).
    opener = (lambda: archive.extractfile(info)) if info.isreg() else None
    return RawMember(
        info.name, info.size, float(info.mtime), opener, problem,  # type: ignore[arg-type]
        sequential=True, read_error=ContainerStopped,
        ratio_check=lambda read: _check_stream_ratio(info.offset_data + read, counted, max_ratio),
    )


def _check_stream_ratio(expanded: int, counted: CountingReader, max_ratio: float) -> None:
    # A tar stream cannot skip a bomb without inflating it: the whole archive stops.
    try:
        check_ratio(expanded, counted.count, max_ratio, "archive stream")
    except MemberRejected as exc:
        raise ContainerStopped(str(exc)) from None


# --- zip ---------------------------------------------------------------------------

def iter_zip(fileobj: BinaryIO, max_ratio: float) -> Iterator[RawMember]:
    """Members of a zip, read one at a time through its central directory."""
    try:
        archive = zipfile.ZipFile(fileobj)
    except READ_ERRORS as exc:
        raise ContainerStopped(f"not a readable zip archive: {exc}") from exc
    with archive:
        for info in archive.infolist():
            if not (info.is_dir() and empty_safe_folder(info)):
                yield _zip_member(archive, info, max_ratio)


def empty_safe_folder(info: zipfile.ZipInfo) -> bool:
    """A folder entry to pass over: no bytes, and a name we would accept. Any other entry
    whose name ends in '/' (one named '/' holding bytes, say) is handed on, so its
    bytes are read or refused with a reason, never dropped unreported."""
    try:
        safe_member_path(info.filename)
    except MemberRejected:
        return False
    return info.file_size == 0 and info.compress_size == 0


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_ratio: float) -> RawMember:
    return RawMember(
        info.filename, info.file_size, zip_mtime(info), lambda: archive.open(info),
        zip_problem(info, max_ratio),
        ratio_check=lambda read: _check_zip_read(read, info, max_ratio),
    )


def zip_problem(info: zipfile.ZipInfo, max_ratio: float) -> str | None:
    mode = info.external_attr >> 16
    if info.flag_bits & 0x1:
        return "encrypted zip member"
    if stat.S_ISLNK(mode):
        return "symbolic link (links are never followed)"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return f"not a regular file ({_file_type(mode)})"
    try:
        check_ratio(info.file_size, info.compress_size, max_ratio, "member (declared)")
    except MemberRejected as exc:
        return str(exc)
    return None


def _check_zip_read(read: int, info: zipfile.ZipInfo, max_ratio: float) -> None:
    # Headers can lie: count the real bytes too.
    if read > info.file_size:
        raise MemberRejected(f"member is larger than its header says ({info.file_size} bytes)")
    check_ratio(read, info.compress_size, max_ratio, "member")


def zip_mtime(info: zipfile.ZipInfo) -> float | None:
    # Zip times carry no time zone; they are read as UTC.
    try:
        return float(calendar.timegm((*info.date_time, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


ARCHIVE_READERS: dict[str, Reader] = {
    ".tar": iter_tar,
    ".tar.gz": iter_tar,
    ".tgz": iter_tar,
    ".zip": iter_zip,
}


def archive_reader(name: str) -> Reader | None:
    """The reader for an archive file name, or None when it is not an archive."""
    lower = name.lower()
    return next((r for ext, r in ARCHIVE_READERS.items() if lower.endswith(ext)), None)
