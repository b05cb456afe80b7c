"""The files behind stored points, served safely: only what was ingested, as it was.

A request names a point id, never a path. The point's payload says where its
item was ingested (``source_uri``: a file, or ``archive!/member`` inside an
archive, nested archives continuing with ``!/``) and what its bytes were
(``item_id`` is their sha256, ``size_bytes`` their length). What is served is:

- a loose file of a folder source in place, once its real path is the stored
  member under the source's real root (no symlink leads out of the source)
  and its size and sha256 still match (checked once per file version); a file of
  an object store or other fsspec source is copied once into the cache below,
  kept only when its sha256 is the item's;
- an archive member (``.tar``, ``.tar.gz``, ``.zip``; any depth of nesting,
  local or any fsspec URL), extracted once, by name, into a cache under
  ``MEDIABIND_HOME/web/media`` and kept only when its sha256 is the item's. A
  member of an uncompressed source .tar/.zip is read by range through the
  archive's kept member index (``ingest.sources.open_indexed_member``); others
  are found by reading the archive up to them;
- for players, video or audio a browser cannot play (MPEG-2, AVI, MKV, HEVC,
  ...) transcoded once into an H.264/AAC MP4 (audio: AAC in M4A) in the same
  cache, and served from there.

Anything else is refused with ``MediaRefused`` (the page's 404/409): no file
the store does not list is opened. (A loose file is hashed whole once per
version before it is first served; an archive is read up to the member unless
its kept index allows a range read. The file is then served by its verified
real path: whoever may write into the source folder could still swap it between
the check and the read, a window we accept.) Files go out with the type ingest
found their bytes to be (``served_type``), never one guessed from their name. Range requests are the HTTP
layer's work (``web.app``): it serves the file this module returns.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ingest.ffmpeg_run import FFMPEG_QUIET, run_capture
from ingest.probe import MediaInfo, ProbeError, probe
from ingest.sources.safety import MemberRejected, recorded_name
from schemas import Settings

MEMBER_SEP = "!/"
SHA256 = re.compile(r"[0-9a-f]{64}")
TRANSCODED = {".mp4": "video/mp4", ".m4a": "audio/mp4"}  # what ``playable`` writes
# On every served file: no sniffing a type other than the one we send, no script.
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
COPY_CHUNK = 1 << 20
TRANSCODE_TIMEOUT_S = 1800.0

# What every current browser plays in <video>/<audio>: containers by ffprobe's
# format name, codecs by ffprobe's codec name.
PLAYABLE_CONTAINERS = ("mov", "mp4", "webm", "ogg", "wav", "mp3", "flac")
PLAYABLE_VIDEO_CODECS = {"h264", "vp8", "vp9", "av1"}
PLAYABLE_AUDIO_CODECS = {"aac", "mp3", "opus", "vorbis", "flac", "pcm_s16le", "pcm_f32le",
                         "pcm_u8", "pcm_s24le"}


class MediaRefused(Exception):  # noqa: N818 (a verdict, not a fault)
    """The stored location cannot be served; ``status``: the HTTP status it means."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What a point's payload says about the file its item was ingested from."""

    item_id: str  # sha256 of the bytes
    kind: str
    archive: str  # the source as given to ingest
    member: str
    size_bytes: int
    locations: tuple[str, ...]  # every source_uri the bytes were seen at
    mime: str = "application/octet-stream"

    @classmethod
    def of(cls, payload: dict[str, Any]) -> StoredFile:
        """From a point's payload; MediaRefused when its item id is not a sha256 (it
        names cache files, so nothing else may reach a path)."""
        item_id = str(payload.get("item_id", ""))
        if not SHA256.fullmatch(item_id):
            raise MediaRefused("this point's item id is not the sha256 of its bytes")
        uris = payload.get("source_uri") or ()
        uris = (uris,) if isinstance(uris, str) else tuple(uris)
        return cls(item_id, str(payload.get("kind", "")), str(payload.get("archive", "")),
                   str(payload.get("member", "")), int(payload.get("size_bytes") or 0), uris,
                   str(payload.get("mime") or "application/octet-stream"))


def served_type(stored: StoredFile, path: Path) -> tuple[str, str]:
    """(Content-Type, disposition) to serve a file as. The type comes from what ingest
    found the bytes to be, never from the member's name: a photo named ``x.html`` is
    still a photo. Only media and plain text are shown inline (text as text/plain);
    anything else, and scriptable images (SVG), is a download."""
    if path.suffix in TRANSCODED:
        return TRANSCODED[path.suffix], "inline"
    major = stored.mime.split("/", 1)[0]
    if major in ("image", "audio", "video") and "svg" not in stored.mime:
        return stored.mime, "inline"
    if stored.kind == "text":
        return "text/plain; charset=utf-8", "inline"
    return "application/octet-stream", "attachment"


class MediaCache:
    """Extracted members, transcodes and verified loose files of one ``MEDIABIND_HOME``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "web" / "media"
        self.max_bytes = settings.max_member_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._verified: set[tuple[str, int, int, int]] = set()

    # --- the original bytes ----------------------------------------------------------

    def original(self, stored: StoredFile) -> Path:
        """A local file holding exactly the item's bytes, from the first location that
        still has them; MediaRefused when none does."""
        if not stored.locations:
            raise MediaRefused("this point records no file location")
        refusals = []
        for location in stored.locations:
            try:
                return self._at(stored, location)
            except MediaRefused as refused:
                refusals.append((location, refused))
        status = max(refused.status for _, refused in refusals)  # 409 (changed) over 404
        raise MediaRefused("; ".join(f"{loc}: {why}" for loc, why in refusals), status)

    def _at(self, stored: StoredFile, location: str) -> Path:
        outer, *members = location.split(MEMBER_SEP)
        if not members:
            return self._loose(stored, location)
        with self._one(stored.item_id):
            cached = self.root / stored.item_id[:2] / f"{stored.item_id}{_suffix(members[-1])}"
            if cached.is_file():
                return cached
            self._extract(stored, outer, members, cached)
            return cached

    def _loose(self, stored: StoredFile, location: str) -> Path:
        path = Path(location.removeprefix("file://"))
        if "://" in location and not location.startswith("file://"):
            return self._fetched(stored, location)
        # The real path must be the stored member under the source's real root: a link
        # inside the source (to anywhere) makes them differ.
        root = _real_root(stored.archive, location)
        real = Path(os.path.realpath(path))
        wanted = root if stored.archive == location else root / stored.member
        if real != wanted or not real.is_file():
            raise MediaRefused("the stored file is gone or now leads elsewhere (a link)")
        info = real.stat()
        key = (str(real), info.st_size, info.st_mtime_ns, info.st_ino)
        if key not in self._verified:
            if info.st_size != stored.size_bytes or _sha256_file(real) != stored.item_id:
                raise MediaRefused("the file changed since it was ingested; ingest it again",
                                   409)
            self._verified.add(key)
        return real

    def _fetched(self, stored: StoredFile, location: str) -> Path:
        """A file of an object store or other fsspec source, copied once into the cache
        (kept only when its sha256 is the item's), then served from there."""
        with self._one(stored.item_id):
            cached = self.root / stored.item_id[:2] / f"{stored.item_id}{_suffix(location)}"
            if cached.is_file():
                return cached
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".fetch-") as tmp:
                part = Path(tmp) / "object"
                with _opened(location) as stream:
                    _copy_out(stream, part, stored.size_bytes)
                self._keep_if_ingested(stored, part, cached)
            return cached

    def _keep_if_ingested(self, stored: StoredFile, part: Path, cached: Path) -> None:
        if part.stat().st_size != stored.size_bytes or _sha256_file(part) != stored.item_id:
            raise MediaRefused("the file changed since it was ingested; ingest it again", 409)
        os.replace(part, cached)

    def _extract(self, stored: StoredFile, outer: str, members: list[str], cached: Path) -> None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".extract-") as tmp:
            work = Path(tmp)
            current = self._by_range(outer, members[0], work / "m0")
            if current is None:
                with _opened(outer) as stream:
                    current = _member_to_file(stream, outer, members[0], work / "m0",
                                              self.max_bytes)
            for depth, member in enumerate(members[1:], start=1):
                with current.open("rb") as stream:
                    current = _member_to_file(stream, members[depth - 1], member,
                                              work / f"m{depth}", self.max_bytes)
            self._keep_if_ingested(stored, current, cached)

    def _by_range(self, archive: str, member: str, out: Path) -> Path | None:
        """The member read by range through the archive's kept index (an uncompressed
        .tar/.zip source split into shards); None: read the archive through instead."""
        from ingest.sources import open_indexed_member

        try:
            reader = open_indexed_member(archive, member, self.settings)
        except MemberRejected as exc:
            raise MediaRefused(f"the archive entry was refused: {exc}") from None
        if reader is None:
            return None
        with reader:
            return _copy_out(reader, out, self.max_bytes)

    # --- what a player plays ---------------------------------------------------------

    def playable(self, stored: StoredFile) -> Path:
        """The item's media in a form a browser's player plays: the original bytes when
        it can, else a transcode made once."""
        original = self.original(stored)
        if stored.kind not in ("video", "audio"):
            return original
        try:
            info = probe(original)
        except ProbeError as exc:
            raise MediaRefused(f"not playable: {exc}", 409) from None
        if browser_plays(info):
            return original
        suffix = ".mp4" if stored.kind == "video" and info.video is not None else ".m4a"
        target = self.root / stored.item_id[:2] / f"{stored.item_id}.play{suffix}"
        with self._one(f"{stored.item_id}.play"):
            if not target.is_file():
                _transcode(original, target, video=suffix == ".mp4")
        return target

    @contextmanager
    def _one(self, key: str) -> Iterator[None]:
        """One thread at a time makes a given cache entry; others wait and reuse it."""
        with self._locks_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


def browser_plays(info: MediaInfo) -> bool:
    """Whether a browser plays this file as it is (container and every codec)."""
    containers = set(info.format_name.split(","))
    if not containers & set(PLAYABLE_CONTAINERS):
        return False
    if "matroska" in containers and info.video is not None and info.video.codec == "h264":
        return False  # reported as "matroska,webm": an MKV, which browsers refuse
    video_ok = info.video is None or info.video.codec in PLAYABLE_VIDEO_CODECS
    audio_ok = info.audio is None or info.audio.codec in PLAYABLE_AUDIO_CODECS
    return video_ok and audio_ok


def _transcode(source: Path, target: Path, *, video: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    codecs = (["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
               "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2"] if video else ["-vn"])
    args = ["ffmpeg", *FFMPEG_QUIET, "-y", "-i", str(source), *codecs, "-c:a", "aac",
            "-movflags", "+faststart", "-f", "mp4", str(part)]
    try:
        run_capture(args, TRANSCODE_TIMEOUT_S)
        os.replace(part, target)
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise MediaRefused(f"could not be made playable: {exc}", 409) from None


# --- reading archives ------------------------------------------------------------------


@contextmanager
def _opened(location: str) -> Iterator[IO[bytes]]:
    """The outermost archive, local or through fsspec, opened for reading."""
    if "://" in location and not location.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(location, "rb") as stream:
                yield stream
        except FileNotFoundError:
            raise MediaRefused("the archive is gone") from None
        return
    path = Path(location.removeprefix("file://"))
    if not path.is_file():
        raise MediaRefused("the archive is gone")
    with path.open("rb") as stream:
        yield stream


def _member_to_file(stream: IO[bytes], container: str, member: str, out: Path,
                    max_bytes: int) -> Path:
    """Copy the regular-file member named exactly ``member`` out of the archive."""
    if container.endswith(".zip"):
        return _zip_member(stream, member, out, max_bytes)
    if container.endswith(ARCHIVE_SUFFIXES):
        return _tar_member(stream, member, out, max_bytes)
    raise MediaRefused(f"{container!r} is not an archive mediabind reads")


def _tar_member(stream: IO[bytes], member: str, out: Path, max_bytes: int) -> Path:
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for info in archive:
                if recorded_name(info.name) != member:
                    continue
                if not info.isreg():
                    raise MediaRefused("the archive entry is not a regular file")
                return _copy_out(archive.extractfile(info), out, min(info.size, max_bytes))
    except tarfile.TarError as exc:
        raise MediaRefused(f"the archive cannot be read: {exc}", 409) from None
    raise MediaRefused("the archive holds no such member")


def _zip_member(stream: IO[bytes], member: str, out: Path, max_bytes: int) -> Path:
    try:
        with zipfile.ZipFile(_seekable(stream, out.with_suffix(".zip"))) as archive:
            info = next((i for i in archive.infolist() if recorded_name(i.filename) == member), None)
            if info is None:
                raise MediaRefused("the archive holds no such member")
            if info.is_dir() or info.file_size > max_bytes:
                raise MediaRefused("the archive entry is not a file mediabind serves")
            with archive.open(info) as src:
                return _copy_out(src, out, info.file_size)
    except (zipfile.BadZipFile, RuntimeError) as exc:
        raise MediaRefused(f"the archive cannot be read: {exc}", 409) from None


def _seekable(stream: IO[bytes], spill: Path) -> IO[bytes] | Path:
    """The stream when it seeks, else a copy on disk that ZipFile opens (and closes)."""
    if stream.seekable():
        return stream
    with spill.open("wb") as f:
        shutil.copyfileobj(stream, f, COPY_CHUNK)
    return spill


def _copy_out(src: IO[bytes] | None, out: Path, limit: int) -> Path:
    if src is None:
        raise MediaRefused("the archive entry has no content")
    copied = 0
    with out.open("wb") as f:
        while chunk := src.read(COPY_CHUNK):
            copied += len(chunk)
            if copied > limit:  # more than the header said: not the member we stored
                raise MediaRefused("the archive entry is longer than recorded", 409)
            f.write(chunk)
    return out


# --- small helpers -----------------------------------------------------------------------


def _real_root(archive: str, location: str) -> Path:
    return Path(os.path.realpath((archive or location).removeprefix("file://")))


def _suffix(member: str) -> str:
    name = member.rsplit("/", 1)[-1]
    suffix = "".join(Path(name).suffixes[-2:]) if name.endswith(".tar.gz") else Path(name).suffix
    return suffix if suffix.replace(".", "").isalnum() and len(suffix) <= 12 else ""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
