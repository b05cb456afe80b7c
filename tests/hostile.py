"""Builders of hostile archives, for the source tests and the reliability suite.

Every builder writes one archive at ``path`` holding the given ``good`` files
(name → bytes) plus the hostile entry, and returns ``path``. The ``good`` files
come first unless said otherwise, so a test can check they still come through.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import Rejected, Settings

if TYPE_CHECKING:
    from ingest.sources import SourceEntry

Files = Mapping[str, bytes]


class RandomBytes(io.RawIOBase):
    """A file object of ``size`` incompressible bytes that never sits in memory whole."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left, 1 << 20)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n


def add_tar_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def add_tar_special(archive: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    """A header-only entry: SYMTYPE, LNKTYPE, CHRTYPE, BLKTYPE or FIFOTYPE."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = (1, 3) if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (0, 0)
    archive.addfile(info)


def write_tar(path: Path, good: Files, extra: Files = {}) -> Path:  # noqa: B006 (read only)
    """A tar (gzip when the name ends in .gz/.tgz) of ``good`` then ``extra`` files."""
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as archive:
        for name, data in {**good, **extra}.items():
            add_tar_file(archive, name, data)
    return path


def write_zip(path: Path, good: Files, extra: Files = {}) -> Path:  # noqa: B006 (read only)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in {**good, **extra}.items():
            archive.writestr(name, data)
    return path


def traversal_tar(path: Path, good: Files, name: str = "../evil.txt") -> Path:
    return write_tar(path, good, {name: b"escaped"})


def absolute_path_tar(path: Path, good: Files, name: str) -> Path:
    """``name`` should be an absolute path that must never be written."""
    return write_tar(path, good, {name: b"escaped"})


def traversal_zip(path: Path, good: Files, name: str = "../evil.txt") -> Path:
    return write_zip(path, good, {name: b"escaped"})


def link_tar(path: Path, good: Files) -> Path:
    """A symlink and a hard link pointing out of the archive."""
    with tarfile.open(path, "w") as archive:
        for name, data in good.items():
            add_tar_file(archive, name, data)
        add_tar_special(archive, "link_to_passwd", tarfile.SYMTYPE, "/etc/passwd")
        add_tar_special(archive, "hard_to_passwd", tarfile.LNKTYPE, "../../etc/passwd")
    return path


def symlink_zip(path: Path, good: Files) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in good.items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("link_to_passwd")
        info.external_attr = (0o120777 << 16)  # S_IFLNK: the data is the link target
        archive.writestr(info, "/etc/passwd")
    return path


def device_tar(path: Path, good: Files) -> Path:
    """A character device, a block device and a fifo entry."""
    with tarfile.open(path, "w") as archive:
        for name, data in good.items():
            add_tar_file(archive, name, data)
        add_tar_special(archive, "dev_null", tarfile.CHRTYPE)
        add_tar_special(archive, "dev_sda", tarfile.BLKTYPE)
        add_tar_special(archive, "a_fifo", tarfile.FIFOTYPE)
    return path


def zip_bomb(path: Path, good: Files, size: int = 32 << 20) -> Path:
    """A member of ``size`` zero bytes (expands ~1000x) between the good files."""
    items = list(good.items())
    half = len(items) // 2
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in items[:half]:
            archive.writestr(name, data)
        with archive.open("bomb.txt", "w", force_zip64=True) as member:
            for _ in range(size >> 20):
                member.write(bytes(1 << 20))
        for name, data in items[half:]:
            archive.writestr(name, data)
    return path


def targz_bomb(path: Path, good: Files, size: int = 32 << 20) -> Path:
    """A tar.gz whose stream expands ~1000x after the good files."""
    with tarfile.open(path, "w:gz", compresslevel=9) as archive:
        for name, data in good.items():
            add_tar_file(archive, name, data)
        info = tarfile.TarInfo("bomb.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(bytes(size)))
    return path


def many_members_tar(path: Path, count: int) -> Path:
    return write_tar(path, {f"f{i:05d}.txt": f"file {i}".encode() for i in range(count)})


def truncated_targz(path: Path, good: Files, filler: int = 256 << 10) -> Path:
    """A tar.gz cut in the middle of an incompressible member that follows ``good``."""
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w:gz") as archive:
        for name, data in good.items():
            add_tar_file(archive, name, data)
        add_tar_file(archive, "cut.bin", os.urandom(filler))
    data = full.getvalue()
    path.write_bytes(data[: len(data) - filler // 2])
    return path


def targz_with_damaged_header(path: Path, good: Files) -> Path:
    """A tar.gz of ``good`` then two more members, the first of whose headers has a bad
    checksum: tarfile alone takes that header for the end of the archive."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        for name, data in good.items():
            add_tar_file(archive, name, data)
        damaged_at = archive.offset
        add_tar_file(archive, "after_1.txt", b"after the damage")
        add_tar_file(archive, "after_2.txt", b"lost without a word")
    raw = bytearray(plain.getvalue())
    raw[damaged_at + 148] ^= 0x11  # a digit of the header's checksum field
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def corrupt_zip(path: Path) -> Path:
    """Bytes that are not a zip at all."""
    path.write_bytes(b"PK\x03\x04" + os.urandom(512))
    return path


def zip_with_corrupt_member(path: Path, good: Files, damaged: str = "damaged.txt") -> Path:
    """A valid zip whose member ``damaged`` has flipped compressed bytes (bad CRC)."""
    write_zip(path, good, {damaged: b"the quick brown fox " * 200})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(damaged)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 5, start + 15):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def big_random_tar(path: Path, members: int, member_bytes: int, suffix: str = ".bin") -> Path:
    """A plain tar of incompressible members, written without holding any in memory."""
    with tarfile.open(path, "w") as archive:
        for i in range(members):
            info = tarfile.TarInfo(f"random_{i}{suffix}")
            info.size = member_bytes
            archive.addfile(info, io.BufferedReader(RandomBytes(member_bytes)))
    return path


# --- good files to mix in ------------------------------------------------------------

def image_bytes(fmt: str, size: int = 48, gray: bool = False) -> bytes:
    """A real photo from scikit-image (astronaut, or camera when ``gray``) as ``fmt``."""
    from PIL import Image
    from skimage import data

    pixels = data.camera() if gray else data.astronaut()
    image = Image.fromarray(pixels).resize((size, size))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def ffmpeg_bytes(workdir: Path, name: str, *args: str) -> bytes:
    """Real media made by ``ffmpeg -f lavfi`` (e.g. ``"-i", "sine=d=0.2"``)."""
    out = workdir / name
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", *args, str(out)], check=True,
                   timeout=60)
    return out.read_bytes()


def sample_files(workdir: Path) -> dict[str, bytes]:
    """A small mixed tree: images, text, video, audio, depth, IMU, a sidecar, a duplicate."""
    photo = image_bytes("JPEG")
    return {
        "photo.jpg": photo,
        "photo.jpg.json": json.dumps({"caption": "an astronaut", "year": 1983}).encode(),
        "camera.png": image_bytes("PNG", gray=True),
        "notes/readme.txt": b"a bird at sea, waves crackling\n",
        "notes/todo.md": b"# todo\n- index the archive\n",
        "media/clip.mp4": ffmpeg_bytes(workdir, "clip.mp4", "-i", "testsrc=d=0.4:s=32x32:r=10",
                                       "-pix_fmt", "yuv420p"),
        "media/tone.wav": ffmpeg_bytes(workdir, "tone.wav", "-i", "sine=d=0.2"),
        "sensors/room.depth.png": image_bytes("PNG", size=16, gray=True),
        "sensors/walk.imu.csv": b"ax,ay,az,gx,gy,gz\n0,0,9.8,0,0,0\n",
        "zz_copy/photo_again.jpg": photo,
    }


def write_folder(root: Path, files: Files) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


# --- reading a source in tests -------------------------------------------------------

@dataclass
class SourceRun:
    """Everything one ``iter_source`` call yielded, spool files already released."""

    entries: list[SourceEntry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    order: list[SourceEntry | Rejected] = field(default_factory=list)

    def by_member(self) -> dict[str, SourceEntry]:
        return {e.item.member: e for e in self.entries}

    def reasons(self) -> dict[str, str]:
        return {r.uri: r.reason for r in self.rejected}


def run_source(source: str | Path, settings: Settings, **kwargs: object) -> SourceRun:
    """Read a whole source (never raising for bad members), releasing every entry."""
    from ingest.sources import SourceEntry, iter_source

    run = SourceRun()
    for record in iter_source(source, settings, **kwargs):  # type: ignore[arg-type]
        run.order.append(record)
        if isinstance(record, SourceEntry):
            assert record.path.is_file()
            record.release()
            run.entries.append(record)
        else:
            run.rejected.append(record)
    return run


# --- broken media (the reliability suite) -----------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds one tiny IDAT chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def patch_mp4_duration(data: bytes, seconds: int = 0xFFFFFFFF) -> bytes:
    """An mp4 whose movie header (``mvhd``, version 0) claims ``seconds`` (timescale 1)."""
    import struct

    out = bytearray(data)
    at = out.find(b"mvhd")
    if at < 0 or out[at + 4] != 0:
        raise ValueError("no version-0 mvhd box")
    out[at + 16:at + 24] = struct.pack(">II", 1, min(seconds, 0xFFFFFFFF))
    return bytes(out)


def patch_mp4_codec_tag(data: bytes, old: bytes = b"avc1", new: bytes = b"zzzz") -> bytes:
    """An mp4 whose sample entry names a codec that does not exist (the entry in ``stsd``,
    not the same four letters among the file type's compatible brands)."""
    at = data.find(old, max(data.find(b"stsd"), 0))
    if at < 0 or data.find(b"stsd") < 0:
        raise ValueError(f"no {old!r} sample entry")
    return data[:at] + new + data[at + len(old):]


def patch_mp4_dimensions(data: bytes, width: int = 60000, height: int = 60000) -> bytes:
    """An mp4 whose track header and sample entry claim ``width`` x ``height``."""
    import struct

    out = bytearray(data)
    tkhd = out.find(b"tkhd")  # version 0: size fields are the last 8 bytes (16.16 fixed)
    end = tkhd - 4 + struct.unpack(">I", out[tkhd - 4:tkhd])[0]
    out[end - 8:end] = struct.pack(">II", width << 16, height << 16)
    entry = out.find(b"avc1")  # visual sample entry: width, height at +28 from the type
    out[entry + 28:entry + 32] = struct.pack(">HH", min(width, 0xFFFF), min(height, 0xFFFF))
    return bytes(out)


def wav_header_only(rate: int = 16000) -> bytes:
    """A WAV with a valid header and a data chunk of zero bytes (a zero-length stream)."""
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", 0))


def nested_archives(levels: int, inner: Files) -> tuple[str, bytes]:
    """``inner`` in a zip, wrapped in a tar, a zip, ... ``levels`` archives deep in all.

    Returns the outermost archive's member name and bytes, ready to put in a source.
    """
    name, data = "level1.zip", _zip_bytes(inner)
    for level in range(2, levels + 1):
        wrap, ext = (_tar_bytes, "tar") if level % 2 == 0 else (_zip_bytes, "zip")
        name, data = f"level{level}.{ext}", wrap({name: data})
    return name, data


def _zip_bytes(files: Files) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def _tar_bytes(files: Files) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            add_tar_file(archive, name, data)
    return out.getvalue()


def write_tar_raw_names(path: Path, files: Files) -> Path:
    """A tar whose names may hold lone surrogates: written as the raw (invalid UTF-8) bytes."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for name, data in files.items():
            add_tar_file(archive, name, data)
    return path


class PeakRss:
    """Samples this process's resident memory in a thread while in the ``with`` block."""

    def __init__(self, every_s: float = 0.01) -> None:
        import psutil

        self.process = psutil.Process()
        self.every_s = every_s
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        """Highest RSS seen minus the RSS when the block started (bytes)."""
        return self.peak - self.baseline

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
