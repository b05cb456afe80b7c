"""Planning: a source is listed and cut into shards without reading any content."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from ingest.shards import write_manifest
from ingest.sources import ContainerEnd, SourceEntry, iter_shard, iter_source, plan_source
from schemas import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", shard_files=3, shard_bytes=10_000)


def files(root: Path, names: dict[str, bytes]) -> Path:
    for name, data in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w") as tf:
            for name, data in members.items():
                add_file(tf, name, data)
    return path


def rchar() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar"))
    return int(line.split()[1])


def test_loose_files_are_cut_by_count_and_bytes_and_archives_stand_alone(tmp_path, settings):
    source = files(tmp_path / "src", {f"n{i}.txt": b"x" * 100 for i in range(7)}
                   | {"big.bin": b"y" * 20_000})
    with tarfile.open(source / "a.tar", "w") as tar:
        tar.add(source / "n0.txt", "inside.txt")
    plan = plan_source(source, settings)
    shapes = [(s.archive, [m.name for m in s.members]) for s in plan.shards]
    assert shapes == [(True, ["a.tar"]), (False, ["big.bin"]), (False, ["n0.txt", "n1.txt", "n2.txt"]),
                      (False, ["n3.txt", "n4.txt", "n5.txt"]), (False, ["n6.txt"])]
    assert plan.listed == 9 and len({s.shard_id for s in plan.shards}) == 5
    assert plan_source(source, settings).shards == plan.shards  # deterministic ids


def test_a_sidecar_is_never_cut_from_its_file(tmp_path, settings):
    source = files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c",
                                      "c.txt.json": b'{"camera": "A"}', "d.txt": b"d"})
    plan = plan_source(source, settings)
    assert [[m.name for m in s.members] for s in plan.shards] == [
        ["a.txt", "b.txt", "c.txt", "c.txt.json"], ["d.txt"]]
    entries = [e for s in plan.shards for e in iter_shard(s, settings)
               if isinstance(e, SourceEntry)]
    assert {e.item.member: e.item.meta for e in entries}["c.txt"] == {"camera": "A"}


def test_planning_reads_no_content(tmp_path, settings):
    source = files(tmp_path / "src", {f"f{i}.bin": bytes(200_000) for i in range(40)})
    before = rchar()
    plan = plan_source(source, settings)
    assert rchar() - before < 200_000  # less than one file's bytes for the whole listing
    assert plan.members == 40


def test_each_shard_reads_only_its_own_members(tmp_path, settings):
    source = files(tmp_path / "src", {f"f{i}.txt": f"file {i}".encode() for i in range(5)})
    first, second = plan_source(source, settings).shards
    got = [e.item.member for e in iter_shard(second, settings) if isinstance(e, SourceEntry)]
    assert got == [m.name for m in second.members] == ["f3.txt", "f4.txt"]
    assert [m.name for m in first.members] == ["f0.txt", "f1.txt", "f2.txt"]


def test_a_folder_with_more_files_than_max_members_is_read_whole(tmp_path, settings):
    """There is no per-source cap: the member limit holds per archive."""
    source = files(tmp_path / "src", {f"f{i}.txt": f"file {i}".encode() for i in range(10)})
    small = settings.model_copy(update={"max_members": 2, "max_total_bytes": 20})
    entries = [e for e in iter_source(source, small) if isinstance(e, SourceEntry)]
    assert len(entries) == 10


def test_a_file_gone_between_listing_and_reading_is_a_rejection(tmp_path, settings):
    source = files(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    [shard] = plan_source(source, settings).shards
    (source / "b.txt").unlink()
    out = list(iter_shard(shard, settings))
    assert [e.item.member for e in out if isinstance(e, SourceEntry)] == ["a.txt"]
    [gone] = [e for e in out if not isinstance(e, SourceEntry)]
    assert gone.uri == str(source / "b.txt") and "cannot read a listed file" in gone.reason


def entries_of(plan, settings) -> list[str]:
    return [e.item.source_uri for s in plan.shards for e in iter_shard(s, settings)
            if isinstance(e, SourceEntry)]


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_a_source_archive_is_split_into_parts_read_by_range(tmp_path, settings, suffix):
    archive = tmp_path / f"a{suffix}"
    write_archive(archive, {f"f{i}.txt": f"file {i}".encode() for i in range(5)})
    plan = plan_source(archive, settings)
    assert [(s.part, len(s.members)) for s in plan.shards] == [((0, 2), 3), ((1, 2), 2)]
    assert all(s.whole_source and not s.archive for s in plan.shards)
    assert entries_of(plan, settings) == [f"{archive}!/f{i}.txt" for i in range(5)]
    ends = [e for s in plan.shards for e in iter_shard(s, settings)
            if isinstance(e, ContainerEnd)]
    assert [(e.part, e.members, e.complete) for e in ends] == [((0, 2), 3, True),
                                                               ((1, 2), 2, True)]


def test_a_source_archive_is_indexed_once_and_again_only_when_it_changes(tmp_path, settings):
    archive = write_archive(tmp_path / "a.tar", {f"f{i}.txt": b"one" for i in range(5)})
    built: list[int] = []

    def counted(source, s):
        from ingest.sources import index_archive

        built.append(1)
        return index_archive(source, s)

    first = plan_source(archive, settings, index_with=counted)
    again = plan_source(archive, settings, index_with=counted)  # e.g. after a crash
    assert len(built) == 1 and [s.members for s in again.shards] == [
        s.members for s in first.shards]
    write_archive(archive, {f"f{i}.txt": b"other bytes" for i in range(6)})
    changed = plan_source(archive, settings, index_with=counted)
    assert len(built) == 2 and sum(len(s.members) for s in changed.shards) == 6
    (settings.home / "indexes").joinpath(next(
        p.name for p in (settings.home / "indexes").iterdir())).write_bytes(b"damaged")
    assert sum(len(s.members) for s in plan_source(archive, settings,
                                                   index_with=counted).shards) == 6
    assert len(built) == 3  # a damaged kept index is built again, not trusted


def test_a_compressed_or_damaged_source_archive_stays_one_shard(tmp_path, settings):
    gz = tmp_path / "a.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for i in range(5):
            add_file(tf, f"f{i}.txt", b"x")
    [shard] = plan_source(gz, settings).shards
    assert shard.archive and shard.part is None

    cut = tmp_path / "cut.tar"
    write_archive(cut, {f"f{i}.txt": bytes(2000) for i in range(5)})
    cut.write_bytes(cut.read_bytes()[:4000])  # ends inside the second member
    [shard] = plan_source(cut, settings).shards  # its one pass reports where it broke
    assert shard.archive and shard.part is None


def test_a_part_of_an_archive_changed_since_it_was_indexed_reads_nothing(tmp_path, settings):
    archive = tmp_path / "a.tar"
    write_archive(archive, {f"f{i}.txt": b"one" for i in range(5)})
    plan = plan_source(archive, settings)
    write_archive(archive, {f"f{i}.txt": b"other bytes" for i in range(5)})
    records = list(iter_shard(plan.shards[0], settings))
    assert not [r for r in records if isinstance(r, SourceEntry)]
    assert any("changed since it was indexed" in getattr(r, "reason", "") for r in records)
    assert [r.complete for r in records if isinstance(r, ContainerEnd)] == [False]


def test_a_zip_prefix_lists_its_objects(tmp_path, settings):
    import fsspec

    memory = fsspec.filesystem("memory")
    for i in range(4):
        memory.pipe(f"/bucket/p/f{i}.txt", f"object {i}".encode())
    plan = plan_source("memory://bucket/p", settings)
    assert [len(s.members) for s in plan.shards] == [3, 1]
    assert entries_of(plan, settings) == [f"memory://bucket/p/f{i}.txt" for i in range(4)]


def test_the_manifest_lists_every_member_of_every_shard(tmp_path, settings):
    import pyarrow.parquet as pq

    source = files(tmp_path / "src", {f"f{i}.txt": b"x" for i in range(4)})
    plan = plan_source(source, settings)
    table = pq.read_table(write_manifest(plan, tmp_path / "run" / "manifest.parquet"))
    assert table.column("name").to_pylist() == [f"f{i}.txt" for i in range(4)]
    assert table.column("shard_id").to_pylist() == [plan.shards[0].shard_id] * 3 + [
        plan.shards[1].shard_id]


def test_a_prefix_is_listed_in_parallel_and_in_the_order_of_a_plain_find(tmp_path, settings):
    import fsspec

    memory = fsspec.filesystem("memory")
    names = [f"/lst/p/{d}/f{i}.txt" for d in ("a", "b", "c/deep") for i in range(3)]
    names += ["/lst/p/top.txt"]
    for name in names:
        memory.pipe(name, name.encode())
    plan = plan_source("memory://lst/p", settings.model_copy(update={"shard_files": 100}))
    listed = [m.name for s in plan.shards for m in s.members]
    plain = sorted(p.removeprefix("/lst/p/") for p in memory.find("/lst/p"))
    assert listed == plain and len(listed) == 10


def test_an_object_that_cannot_be_read_now_is_retried_by_the_next_run(settings):
    """An I/O error on an object read on its own (here: gone from the store after the
    listing) is a passing refusal, not a verdict on its bytes."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in ("a.txt", "b.txt"):
        memory.pipe(f"/bucket/io/{name}", name.encode())
    [shard] = plan_source("memory://bucket/io", settings).shards
    memory.rm("/bucket/io/b.txt")
    out = list(iter_shard(shard, settings))
    [gone] = [e for e in out if not isinstance(e, SourceEntry)]
    assert gone.uri == "memory://bucket/io/b.txt" and gone.transient
