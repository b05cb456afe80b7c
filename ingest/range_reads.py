"""Reading parts of one archive by range from an fsspec filesystem, without its neighbours.

``RangeFile`` is a seekable view of a byte range that fetches with ``fs.cat_file``
(one request per block: local, s3, memory alike) and counts what it fetched.
``open_zip_member`` gives one zip member's decompressed bytes from its local header
on, with the checks ``ingest.sources.readers`` applies to a whole zip (declared
size, CRC-32, ``check_ratio``), and a bound on what each read may inflate.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.sources.safety import MemberRejected, check_ratio

MEMBER_BLOCK = 1 << 20  # bytes fetched per request while a member is read
INPUT_CHUNK = 64 << 10  # compressed bytes given to a decompressor at once

_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)
ZIP_UTF8_NAME, _ZIP_ENCRYPTED = 0x800, 0x1
_ZIP_UNSUPPORTED_FLAGS = {0x20: "compressed patched data", 0x40: "strong encryption"}
LOCAL_HEADER_SIZE = _LOCAL_HEADER.size


class RangeFile(io.RawIOBase):
    """Bytes [start, end) of one fsspec file, as a seekable file, fetched by range.

    Each read that misses the last block fetches at least ``block_size`` bytes (one
    request), never past ``end``; ``fetched`` counts every byte fetched. A file that
    ends before ``end`` is an error, not an early end: it was cut, or changed.
    """

    def __init__(self, fs: Any, path: str, start: int, end: int, block_size: int = 0) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.start, self.end, self.block_size = start, end, block_size
        self.position = start
        self.fetched = 0
        self._block_start, self._block = start, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position - self.start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self.start, io.SEEK_CUR: self.position, io.SEEK_END: self.end}
        target = base[whence] + offset
        if target < self.start:
            raise OSError(f"seek to {target - self.start}, before the start")
        self.position = target
        return self.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._take(min(len(buffer), self.end - self.position))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _take(self, n: int) -> bytes:
        if n <= 0:
            return b""
        at = self.position - self._block_start
        if at < 0 or at + n > len(self._block):
            self._fetch(n)
            at = 0
        return self._block[at: at + n]

    def _fetch(self, n: int) -> None:
        stop = min(self.end, self.position + max(n, self.block_size))
        self._block = self.fs.cat_file(self.path, start=self.position, end=stop)
        self._block_start = self.position
        self.fetched += len(self._block)
        if len(self._block) < n:
            raise EOFError(f"{self.path} ends at byte {self.position + len(self._block)}, "
                           f"before byte {self.position + n} (cut, or changed since indexed?)")


# --- one zip member ----------------------------------------------------------------------

@dataclass(frozen=True)
class ZipMember:
    """What the central directory says of one member: enough to read it alone."""

    name: str
    header_offset: int
    size: int
    compressed_size: int
    method: int
    crc: int


def open_zip_member(fs: Any, path: str, member: ZipMember, max_ratio: float) -> ZipMemberReader:
    """The member's decompressed bytes, read by range from its local header on."""
    start = _data_start(fs, path, member)
    stored = RangeFile(fs, path, start, start + member.compressed_size, MEMBER_BLOCK)
    return ZipMemberReader(stored, member, max_ratio)


def _data_start(fs: Any, path: str, member: ZipMember) -> int:
    """Where the stored bytes begin: after the local header, whose name and extra field
    need not match the central directory's in length."""
    offset = member.header_offset
    fixed = fs.cat_file(path, start=offset, end=offset + _LOCAL_HEADER.size)
    if len(fixed) < _LOCAL_HEADER.size:
        raise zipfile.BadZipFile("Truncated file header")
    fields = _LOCAL_HEADER.unpack(fixed)
    if fields[0] != zipfile.stringFileHeader:
        raise zipfile.BadZipFile("Bad magic number for file header")
    flags, name_length, extra_length = fields[3], fields[10], fields[11]
    _check_local_flags(flags)
    name_start = offset + _LOCAL_HEADER.size
    name = fs.cat_file(path, start=name_start, end=name_start + name_length)
    _check_local_name(name, flags, member.name)
    return name_start + name_length + extra_length


def _check_local_flags(flags: int) -> None:
    if flags & _ZIP_ENCRYPTED:
        raise MemberRejected("encrypted zip member")
    for bit, what in _ZIP_UNSUPPORTED_FLAGS.items():
        if flags & bit:
            raise NotImplementedError(f"{what} (zip flag 0x{bit:x}) is not supported")


def _check_local_name(raw: bytes, flags: int, name: str) -> None:
    # As zipfile checks it; ZipInfo cuts a name at its first NUL, so the same is done here.
    local = raw.decode("utf-8" if flags & ZIP_UTF8_NAME else "cp437").split("\x00", 1)[0]
    if local != name:
        raise zipfile.BadZipFile(f"File name in directory {name!r} and header {local!r} differ.")


class Decoder(Protocol):
    """The interface of ``bz2.BZ2Decompressor``, which every method below is given."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int) -> bytes:
        """At most ``max_length`` (> 0) bytes of output."""


class ZipMemberReader(io.RawIOBase):
    """A zip member's decompressed bytes, checked as they come: never more than its
    header says, never expanding past the ratio, and its CRC-32 at the end.

    Each read inflates at most what was asked for, whatever the method (zipfile's own
    reader inflates all the bzip2 or lzma input it has read, without a bound).
    """

    def __init__(self, stored: RangeFile, member: ZipMember, max_ratio: float) -> None:
        super().__init__()
        self.stored, self.member, self.max_ratio = stored, member, max_ratio
        self.decoder = _decoder(member.method)
        self.produced = 0
        self.crc = 0
        self.finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not len(buffer):
            return 0  # a limit of 0 would mean "no limit" to zlib
        data = b"" if self.finished else self._inflate(len(buffer))
        if not data:
            self._finish()
            return 0
        self._check(data)
        buffer[: len(data)] = data
        return len(data)

    def _inflate(self, limit: int) -> bytes:
        while not self.decoder.eof:
            data = b""
            if self.decoder.needs_input:
                data = self.stored.read(INPUT_CHUNK)
                if not data:
                    return b""
            if out := self.decoder.decompress(data, limit):
                return out
        return b""

    def _check(self, data: bytes) -> None:
        # Headers can lie: count the real bytes too (as readers._check_zip_read does).
        self.produced += len(data)
        if self.produced > self.member.size:
            raise MemberRejected(f"member is larger than its header says "
                                 f"({self.member.size} bytes)")
        check_ratio(self.produced, self.member.compressed_size, self.max_ratio, "member")
        self.crc = zlib.crc32(data, self.crc)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.produced < self.member.size:
            raise EOFError(f"member is shorter than its header says ({self.produced} of "
                           f"{self.member.size} bytes)")
        if self.crc != self.member.crc:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self.member.name!r}")


class _Stored:
    """Method 0: the stored bytes are the content."""

    eof = False

    def __init__(self) -> None:
        self._pending = b""

    @property
    def needs_input(self) -> bool:
        return not self._pending

    def decompress(self, data: bytes, max_length: int) -> bytes:
        pending = self._pending + data
        self._pending = pending[max_length:]
        return pending[:max_length]


class _Deflate:
    """Method 8, raw deflate: zlib keeps what did not fit in ``max_length`` as input."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._full = False  # the last call filled its limit: more output may be waiting

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    @property
    def needs_input(self) -> bool:
        return not self._zlib.unconsumed_tail and not self._full

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)
        self._full = len(out) == max_length
        return out


class _ZipLzma:
    """Method 14: zip puts a small header (version, properties) before a raw LZMA1
    stream; liblzma is given those properties, as zipfile does."""

    def __init__(self) -> None:
        self._head = b""
        self._lzma: lzma.LZMADecompressor | None = None

    @property
    def eof(self) -> bool:
        return self._lzma is not None and self._lzma.eof

    @property
    def needs_input(self) -> bool:
        return self._lzma is None or self._lzma.needs_input

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._lzma is None:
            self._head += data
            end = 4 + int.from_bytes(self._head[2:4], "little")
            if len(self._head) < max(4, end):
                return b""  # the header is still incomplete
            self._lzma = lzma.LZMADecompressor(
                lzma.FORMAT_RAW, filters=[_lzma1_filter(self._head[4:end])])
            data = self._head[end:]
        return self._lzma.decompress(data, max_length)


def _lzma1_filter(properties: bytes) -> dict[str, int]:
    """The LZMA1 filter of 5 property bytes: lc/lp/pb in one byte, then the dictionary."""
    if len(properties) != 5 or properties[0] >= 9 * 5 * 5:
        raise lzma.LZMAError("invalid LZMA properties in a zip member")
    pb, rest = divmod(properties[0], 9 * 5)
    lp, lc = divmod(rest, 9)
    dict_size = int.from_bytes(properties[1:], "little")
    return {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}


_DECODERS: dict[int, type] = {zipfile.ZIP_STORED: _Stored, zipfile.ZIP_DEFLATED: _Deflate,
                              zipfile.ZIP_BZIP2: bz2.BZ2Decompressor, zipfile.ZIP_LZMA: _ZipLzma}


def _decoder(method: int) -> Decoder:
    make = _DECODERS.get(method)
    if make is None:
        raise NotImplementedError(f"zip compression method {method} is not supported")
    return make()
