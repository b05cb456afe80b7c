"""The member-offset index (ingest.member_index): built from headers only, split into
shards, read by range in parallel, and congruent with a whole pass of ingest.sources,
on the local filesystem and on fsspec's memory filesystem alike."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import struct
import tarfile
import threading
import tracemalloc
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hostile import (
    absolute_path_tar,
    add_tar_file,
    add_tar_special,
    device_tar,
    link_tar,
    run_source,
    symlink_zip,
    traversal_tar,
    traversal_zip,
    write_tar,
    write_tar_raw_names,
    write_zip,
    zip_bomb,
)

from ingest.member_index import (
    HEADER_BLOCK,
    MemberIndex,
    build_index,
    indexable,
    open_member,
    raw_members,
    read_index,
    split,
    write_index,
)
from ingest.sources import SourceEntry, normalise_source
from ingest.sources.readers import iter_tar, iter_zip
from ingest.sources.safety import Budget, MemberRejected
from ingest.sources.stream import RunState, iter_container
from schemas import Rejected, Settings

RATIO = 200.0
GOOD = {"a.txt": b"alpha, the first file\n", "notes/b.md": b"# beta\n",
        "walk.imu.npy": os.urandom(3000)}
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

Place = Callable[[Path], tuple[Any, str]]


@pytest.fixture(params=["local", "memory"])
def place(request: pytest.FixtureRequest) -> Iterator[Place]:
    """Puts an archive built in tmp_path on the filesystem under test: (fs, path)."""
    if request.param == "local":
        local = fsspec.filesystem("file")
        yield lambda archive: (local, str(archive))
        return
    memory = fsspec.filesystem("memory")
    root = f"/{uuid.uuid4().hex}"

    def put(archive: Path) -> tuple[Any, str]:
        memory.pipe_file(f"{root}/{archive.name}", archive.read_bytes())
        return memory, f"{root}/{archive.name}"

    yield put
    if memory.exists(root):
        memory.rm(root, recursive=True)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", max_compression_ratio=RATIO)


def index_of(fs: Any, path: str, max_members: int = 100_000) -> MemberIndex:
    return build_index(fs, path, max_members=max_members, max_compression_ratio=RATIO)


def read_all(stream: Any, chunk: int = 1 << 16) -> bytes:
    with stream:
        return b"".join(iter(lambda: stream.read(chunk), b""))


# --- the index equals what tarfile and zipfile list ------------------------------------------

def test_tar_index_lists_what_tarfile_lists(tmp_path: Path, place: Place):
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as out:
        add_tar_special(out, "folder", tarfile.DIRTYPE)
        for i in range(1000):
            add_tar_file(out, f"folder/f{i:04d}.txt", b"x" * (i % 700))
    fs, path = place(archive)
    index = index_of(fs, path)
    with tarfile.open(archive) as reference:
        expected = [(m.name, m.offset_data, m.size, float(m.mtime))
                    for m in reference.getmembers() if not m.isdir()]
    assert [(e.name, e.offset, e.size, e.mtime) for e in index.entries] == expected
    assert len(index.entries) == 1000 and index.stopped_reason is None
    assert all(e.problem is None for e in index.entries)
    assert (index.archive_format, index.size) == ("tar", archive.stat().st_size)


def test_zip_index_lists_what_zipfile_lists(tmp_path: Path, place: Place):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("folder/", b"")
        for i in range(1000):
            method = ZIP_METHODS[i % 2]  # stored and deflated, interleaved
            out.writestr(f"folder/f{i:04d}.txt", b"y" * (i % 700), compress_type=method)
    fs, path = place(archive)
    index = index_of(fs, path)
    with zipfile.ZipFile(archive) as reference:
        expected = [(i.filename, i.header_offset, i.file_size, i.compress_size, i.compress_type,
                     i.CRC) for i in reference.infolist() if not i.is_dir()]
    assert [(e.name, e.offset, e.size, e.compressed_size, e.method, e.crc)
            for e in index.entries] == expected
    assert len(index.entries) == 1000 and index.stopped_reason is None
    assert index.bytes_read <= index.size


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_survive(tmp_path: Path, place: Place, tar_format: int):
    names = ["deep/" * 40 + "long.txt", "ünïcödé/" + "é" * 120 + ".txt", "short.txt"]
    archive = tmp_path / "long.tar"
    with tarfile.open(archive, "w", format=tar_format) as out:
        for i, name in enumerate(names):
            add_tar_file(out, name, f"file {i}".encode() * 100)
        add_tar_special(out, "link", tarfile.SYMTYPE, "target/" * 30)
    fs, path = place(archive)
    index = index_of(fs, path)
    assert [e.name for e in index.entries] == [*names, "link"]
    assert [read_all(open_member(fs, path, e)) for e in index.entries[:3]] == \
        [f"file {i}".encode() * 100 for i in range(3)]
    assert index.entries[3].problem == f"symbolic link to {'target/' * 30!r} " \
        "(links are never followed)"


# --- headers only --------------------------------------------------------------------------

class CountingFS:
    """A filesystem seen through a counter of every byte its reads hand back."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.bytes = 0

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        data = self.fs.cat_file(path, start=start, end=end, **kwargs)
        self.bytes += len(data)
        return data

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        opened = self.fs.open(path, mode, **kwargs)
        counter, read = self, opened.read

        def counted_read(*args: Any) -> bytes:
            data = read(*args)
            counter.bytes += len(data)
            return data

        opened.read = counted_read
        return opened

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


def test_tar_index_reads_headers_only(tmp_path: Path, place: Place):
    members, member_bytes = 8, 4 << 20
    archive = tmp_path / "large.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as out:
        for i in range(members):
            add_tar_file(out, f"{'long/' * 30}large_{i}.bin", bytes(member_bytes))
    fs, path = place(archive)
    counting = CountingFS(fs)
    index = index_of(counting, path)
    assert len(index.entries) == members and index.stopped_reason is None
    assert counting.bytes == index.bytes_read
    fraction = index.bytes_read / index.size
    print(f"tar index read {index.bytes_read} of {index.size} bytes ({fraction:.2%})")
    # One read-ahead block per header hop (plus the end marker's), never member data.
    assert index.bytes_read <= (members + 1) * HEADER_BLOCK
    assert fraction < 0.05


# --- shards ---------------------------------------------------------------------------------

def test_split_respects_both_bounds_and_covers_every_entry_once(tmp_path: Path):
    sizes = [(i * 7919) % 5000 for i in range(300)]
    sizes[40] = 50_000  # larger than max_bytes: a range of its own
    archive = tmp_path / "sizes.tar"
    with tarfile.open(archive, "w") as out:
        for i, size in enumerate(sizes):
            add_tar_file(out, f"f{i}.bin", bytes(size))
        add_tar_special(out, "link", tarfile.SYMTYPE, "f0.bin")
    index = index_of(fsspec.filesystem("file"), str(archive))
    max_members, max_bytes = 16, 20_000
    ranges = split(index, max_members, max_bytes)
    assert [i for start, end in ranges for i in range(start, end)] == \
        list(range(len(index.entries)))
    for start, end in ranges:
        taken = sum(e.bytes_to_read for e in index.entries[start:end])
        assert 0 < end - start <= max_members
        assert taken <= max_bytes or end - start == 1
    assert (40, 41) in ranges
    with pytest.raises(ValueError):
        split(index, 0, max_bytes)


def test_split_of_an_index_without_entries():
    empty = MemberIndex("memory:///e.tar", "tar", 10240, None, (), None, 10240)
    assert split(empty, 10, 10) == []
    stopped = replace(empty, stopped_reason="not a readable tar archive: bad")
    assert split(stopped, 10, 10) == [(0, 0)]  # one shard, to report why


# --- reading by range -------------------------------------------------------------------------

def test_open_member_gives_tarfile_bytes(tmp_path: Path, place: Place):
    files = {f"f{i}.bin": os.urandom(size)
             for i, size in enumerate([0, 1, 511, 512, 513, 70_000, (1 << 20) + 12345])}
    fs, path = place(write_tar(tmp_path / "data.tar", files))
    index = index_of(fs, path)
    with tarfile.open(tmp_path / "data.tar") as reference:
        expected = {m.name: reference.extractfile(m).read() for m in reference.getmembers()}
    for entry in index.entries:
        assert read_all(open_member(fs, path, entry), chunk=4096) == expected[entry.name]
        stream = open_member(fs, path, entry)
        assert stream.read(entry.size + 10_000) == expected[entry.name]  # never past its end
        assert stream.read(10) == b""
        assert stream.fetched == entry.size  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ZIP_METHODS)
def test_open_member_gives_zipfile_bytes(tmp_path: Path, place: Place, method: int):
    files = {"empty.txt": b"", "tiny.txt": b"t", "words.txt": b"the zip member " * 40_000,
             "random.bin": os.urandom((1 << 20) + 777)}
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=method) as out:
        for name, data in files.items():
            out.writestr(name, data)
    fs, path = place(archive)
    index = index_of(fs, path)
    assert [e.method for e in index.entries] == [method] * len(files)
    for entry in index.entries:
        assert read_all(open_member(fs, path, entry), chunk=5000) == files[entry.name]
        assert read_all(open_member(fs, path, entry), chunk=1 << 20) == files[entry.name]


def test_shards_read_in_two_threads_give_every_member_once(tmp_path: Path, place: Place):
    files = {f"part{i:02d}.bin": os.urandom(1000 + 997 * i) for i in range(40)}
    fs, path = place(write_tar(tmp_path / "parts.tar", files))
    index = index_of(fs, path)
    ranges: queue.Queue[tuple[int, int]] = queue.Queue()
    for shard in split(index, max_members=7, max_bytes=60_000):
        ranges.put(shard)
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                start, end = ranges.get_nowait()
            except queue.Empty:
                return
            for raw in raw_members(fs, path, index, start, end):
                assert raw.open is not None and not raw.sequential
                digest = hashlib.sha256(read_all(raw.open())).hexdigest()
                with lock:
                    seen.append((raw.name, digest))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(name for name, _ in seen) == Counter(files.keys())
    assert dict(seen) == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


# --- the member pipeline on shards ------------------------------------------------------------

def run_shards(fs: Any, path: str, index: MemberIndex, settings: Settings,
               ranges: list[tuple[int, int]]) -> list[SourceEntry | Rejected]:
    """Each range run through ingest.sources.stream as its own shard, entries released."""
    spool = settings.home / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    records = []
    for start, end in ranges:
        state = RunState(index.uri, settings, spool, {}, Budget.from_settings(settings))
        members = raw_members(fs, path, index, start, end)
        for record in iter_container(state, members, prefix="", depth=0):
            if isinstance(record, SourceEntry):
                record.release()
            records.append(record)
    return records


def outcome(records: list[Any], archive: str) -> tuple[dict[str, str], dict[str, str]]:
    """(member -> item id, member -> reason), members relative to the archive."""
    def member(uri: str) -> str:
        return uri.removeprefix(archive).removeprefix("!/")

    items = {r.item.member: r.item.item_id for r in records if isinstance(r, SourceEntry)}
    reasons = {member(r.uri): r.reason for r in records if isinstance(r, Rejected)}
    return items, reasons


HOSTILE = {
    "links.tar": link_tar,
    "devices.tar": device_tar,
    "traversal.tar": traversal_tar,
    "absolute.tar": lambda path, good: absolute_path_tar(path, good, "/etc/evil.txt"),
    "symlink.zip": symlink_zip,
    "traversal.zip": traversal_zip,
    "bomb.zip": zip_bomb,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_shards_reject_what_a_whole_pass_rejects(tmp_path: Path, place: Place,
                                                  settings: Settings, name: str):
    archive = HOSTILE[name](tmp_path / name, GOOD)
    fs, path = place(archive)
    index = index_of(fs, path)
    whole = run_source(archive, settings)
    shards = run_shards(fs, path, index, settings, split(index, max_members=2, max_bytes=1 << 30))
    assert outcome(shards, index.uri) == outcome(whole.order, normalise_source(archive))
    items, reasons = outcome(shards, index.uri)
    assert set(items) == set(GOOD) and reasons  # good files through, hostile ones refused


def test_index_keeps_hostile_names_and_the_readers_verdicts(tmp_path: Path):
    local = fsspec.filesystem("file")
    tar = traversal_tar(tmp_path / "t.tar", GOOD, name="../../evil.txt")
    assert [e.name for e in index_of(local, str(tar)).entries][-1] == "../../evil.txt"
    cases = [(link_tar, ".tar", iter_tar), (device_tar, ".tar", iter_tar),
             (symlink_zip, ".zip", iter_zip), (zip_bomb, ".zip", iter_zip)]
    for build, suffix, reader in cases:
        archive = build(tmp_path / f"{build.__name__}{suffix}", GOOD)
        with archive.open("rb") as stream:
            verdicts = [(m.name, m.problem) for m in reader(stream, RATIO)]
        assert [(e.name, e.problem) for e in index_of(local, str(archive)).entries] == verdicts
        assert any(problem for _, problem in verdicts)


# --- damaged and hostile archives ---------------------------------------------------------------

def five_member_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for i in range(5):
            add_tar_file(archive, f"m{i}.txt", (f"member {i} ".encode() * 1200)[:10_000])
    return out.getvalue()


MEMBER_SPAN = 512 + 10240  # one header and 10,000 data bytes padded to 512

DAMAGE = {
    "cut in data": (lambda d: d[: 3 * MEMBER_SPAN + 512 + 4000], 3, "runs past the end"),
    "cut in header": (lambda d: d[: 3 * MEMBER_SPAN + 300], 3, "a cut header"),
    "bad header": (lambda d: d[: 3 * MEMBER_SPAN + 148] + b"\x55" + d[3 * MEMBER_SPAN + 149:],
                   3, "invalid header"),
    "no end marker": (lambda d: d[: 5 * MEMBER_SPAN], 5, "without its end marker"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_tar_stops_with_a_reason(tmp_path: Path, place: Place, settings: Settings,
                                         damage: str):
    cut, kept, reason = DAMAGE[damage]
    archive = tmp_path / "damaged.tar"
    archive.write_bytes(cut(five_member_tar()))
    fs, path = place(archive)
    index = index_of(fs, path)
    assert [e.name for e in index.entries] == [f"m{i}.txt" for i in range(kept)]
    assert reason in index.stopped_reason and "stopped reading" in index.stopped_reason
    records = run_shards(fs, path, index, settings, split(index, 2, 1 << 30))
    items, reasons = outcome(records, index.uri)
    assert set(items) == {f"m{i}.txt" for i in range(kept)}
    assert list(reasons) == [""] and index.stopped_reason in reasons[""]  # the archive's own


def test_intact_tar_ends_cleanly(tmp_path: Path):
    archive = tmp_path / "intact.tar"
    archive.write_bytes(five_member_tar())
    assert index_of(fsspec.filesystem("file"), str(archive)).stopped_reason is None


def lying_zip(path: Path, data: bytes, declared: int, crc: int) -> Path:
    """A deflated zip of ``data`` whose headers (local and central) declare ``declared``
    bytes with CRC-32 ``crc``."""
    write_zip(path, {"liar.txt": data})
    raw = bytearray(path.read_bytes())
    local, central = raw.find(zipfile.stringFileHeader), raw.find(zipfile.stringCentralDir)
    struct.pack_into("<I", raw, local + 14, crc)
    struct.pack_into("<I", raw, local + 22, declared)
    struct.pack_into("<I", raw, central + 16, crc)
    struct.pack_into("<I", raw, central + 24, declared)
    path.write_bytes(bytes(raw))
    return path


def test_zip_member_larger_than_its_header_fails(tmp_path: Path, place: Place,
                                                 settings: Settings):
    # The CRC is that of the declared prefix, so only counting the real bytes finds the lie.
    data = b"A" * 5000 + b"B" * 5000
    fs, path = place(lying_zip(tmp_path / "liar.zip", data, 5000, zlib.crc32(data[:5000])))
    index = index_of(fs, path)
    assert index.entries[0].problem is None
    with pytest.raises(MemberRejected, match="larger than its header says"):
        read_all(open_member(fs, path, index.entries[0]))
    _, reasons = outcome(run_shards(fs, path, index, settings, split(index, 5, 1 << 30)),
                         index.uri)
    assert "larger than its header says" in reasons["liar.txt"]


def test_zip_member_shorter_than_its_header_fails(tmp_path: Path, place: Place):
    data = b"C" * 10_000
    fs, path = place(lying_zip(tmp_path / "short.zip", data, 20_000, zlib.crc32(data)))
    index = index_of(fs, path)
    with pytest.raises(EOFError, match="shorter than its header says"):
        read_all(open_member(fs, path, index.entries[0]))


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_zip_bomb_is_refused_declared_and_while_reading(tmp_path: Path, place: Place,
                                                        method: int):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", method) as out, \
            out.open("bomb.bin", "w", force_zip64=True) as member:
        for _ in range(32):
            member.write(bytes(1 << 20))
    fs, path = place(archive)
    entry = index_of(fs, path).entries[0]
    assert "decompression bomb" in entry.problem
    with pytest.raises(MemberRejected, match="decompression bomb"):
        open_member(fs, path, entry)
    unjudged = replace(entry, problem=None)  # the read checks the ratio by itself too
    with pytest.raises(MemberRejected, match="decompression bomb"):
        read_all(open_member(fs, path, unjudged))


def test_bomb_behind_a_lying_header_inflates_no_more_than_asked(tmp_path: Path):
    # 64 MiB of zeros in a few hundred bzip2 bytes, declared as 1,000 bytes: the declared
    # ratio looks harmless, so only a bounded read keeps memory flat.
    archive = tmp_path / "hidden.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_BZIP2) as out, \
            out.open("hidden.bin", "w", force_zip64=True) as member:
        for _ in range(64):
            member.write(bytes(1 << 20))
    raw = bytearray(archive.read_bytes())
    central = raw.find(zipfile.stringCentralDir)
    struct.pack_into("<I", raw, central + 24, 1000)
    archive.write_bytes(bytes(raw))
    local = fsspec.filesystem("file")
    entry = index_of(local, str(archive)).entries[0]
    assert entry.problem is None and entry.size == 1000
    stream = open_member(local, str(archive), entry)
    tracemalloc.start()
    try:
        with pytest.raises(MemberRejected, match="larger than its header says"):
            stream.read(1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_overlapping_zip_entries_are_refused(tmp_path: Path, place: Place):
    # Two central directory entries for one local member: a kernel that would expand
    # once per entry (the non-recursive zip bomb).
    archive = write_zip(tmp_path / "overlap.zip", {"a.txt": b"a" * 5000, "b.txt": b"b" * 5000})
    raw = bytearray(archive.read_bytes())
    second = raw.find(zipfile.stringCentralDir, raw.find(zipfile.stringCentralDir) + 4)
    struct.pack_into("<I", raw, second + 42, 0)  # b.txt's local header offset: a.txt's
    archive.write_bytes(bytes(raw))
    fs, path = place(archive)
    first, _ = index_of(fs, path).entries
    assert first.name == "a.txt" and "overlaps" in first.problem


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_more_than_max_members_stops_the_index(tmp_path: Path, place: Place,
                                               settings: Settings, suffix: str):
    files = {f"f{i:02d}.txt": f"file {i}".encode() for i in range(30)}
    writer = write_tar if suffix == ".tar" else write_zip
    fs, path = place(writer(tmp_path / f"many{suffix}", files))
    index = index_of(fs, path, max_members=10)
    assert [e.name for e in index.entries] == list(files)[:10]
    assert "more than max_members=10" in index.stopped_reason
    ranges = split(index, 4, 1 << 30)
    items, reasons = outcome(run_shards(fs, path, index, settings, ranges), index.uri)
    assert len(items) == 10 and "more than max_members=10" in reasons[""]


def test_archives_read_in_one_pass_get_no_index(tmp_path: Path):
    local = fsspec.filesystem("file")
    assert not indexable("x.tar.gz") and not indexable("x.TGZ") and indexable("x.TAR")
    targz = write_tar(tmp_path / "a.tar.gz", GOOD)
    with pytest.raises(ValueError, match="one shard"):
        index_of(local, str(targz))
    misnamed = tmp_path / "gzipped.tar"
    misnamed.write_bytes(targz.read_bytes())
    index = index_of(local, str(misnamed))
    assert index.entries == () and "gzip-compressed" in index.stopped_reason


def test_changed_archive_is_not_read_with_an_old_index(tmp_path: Path, place: Place,
                                                       settings: Settings):
    # Changed in size, which every filesystem reports (memory:// has no mtime or ETag).
    fs, path = place(write_tar(tmp_path / "v.tar", GOOD))
    index = index_of(fs, path)
    grown = write_tar(tmp_path / "v2.tar", {**GOOD, "new.bin": bytes(20_000)})
    fs.pipe_file(path, grown.read_bytes())
    items, reasons = outcome(run_shards(fs, path, index, settings, [(0, 1)]), index.uri)
    assert not items and "changed since it was indexed" in reasons[""]


# --- Parquet ----------------------------------------------------------------------------------

def test_parquet_round_trip(tmp_path: Path, place: Place):
    archive = link_tar(tmp_path / "names.tar", GOOD)
    raw_names = write_tar_raw_names(tmp_path / "raw.tar", {"caf\udce9.txt": b"latin-1 name"})
    bomb = zip_bomb(tmp_path / "bomb.zip", GOOD)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    for local in (archive, raw_names, bomb, broken):
        fs, path = place(local)
        index = index_of(fs, path)
        where = f"{path}.index.parquet"
        write_index(index, where, fs=fs)
        assert read_index(where, fs=fs) == index
    url = f"memory:///{uuid.uuid4().hex}/index.parquet"
    write_index(index, url)
    assert read_index(url) == index
    fsspec.filesystem("memory").rm(url)
    assert index_of(*place(raw_names)).entries[0].name == "caf\udce9.txt"  # as written
