"""ingest.sources against hostile input: every bad entry gets a Rejected with a reason,
good members still come through, and nothing is written outside the spool folder."""

from __future__ import annotations

import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from hostile import (
    absolute_path_tar,
    corrupt_zip,
    device_tar,
    image_bytes,
    link_tar,
    many_members_tar,
    run_source,
    symlink_zip,
    targz_bomb,
    targz_with_damaged_header,
    traversal_tar,
    traversal_zip,
    truncated_targz,
    write_folder,
    write_tar,
    write_zip,
    zip_bomb,
    zip_with_corrupt_member,
)

from ingest.sources import iter_source, kept_index_path
from schemas import Kind, Settings, Stage

GOOD = {"a.txt": b"alpha", "img/b.png": image_bytes("PNG"), "c.md": b"# gamma"}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_good_members_came_through(run) -> None:
    assert set(run.by_member()) == set(GOOD)


def only_rejection(run, source: Path, member: str) -> str:
    """The reason of the one Rejected, which must be for ``member`` at stage SOURCE."""
    assert [r.uri for r in run.rejected] == [f"{source}!/{member}"]
    assert run.rejected[0].stage is Stage.SOURCE
    return run.rejected[0].reason


@pytest.mark.parametrize(("build", "member", "reason"), [
    (lambda p: traversal_tar(p / "t.tar", GOOD), "../evil.txt", "climbs out"),
    (lambda p: traversal_tar(p / "t.tgz", GOOD, "a/../../../evil.txt"), "a/../../../evil.txt",
     "climbs out"),
    (lambda p: traversal_zip(p / "t.zip", GOOD), "../evil.txt", "climbs out"),
    (lambda p: traversal_zip(p / "t.zip", GOOD, "..\\..\\evil.txt"), "..\\..\\evil.txt",
     "climbs out"),
    (lambda p: traversal_zip(p / "t.zip", GOOD, "C:/evil.txt"), "C:/evil.txt", "absolute"),
    (lambda p: symlink_zip(p / "t.zip", GOOD), "link_to_passwd", "never followed"),
])
def test_unsafe_paths_are_rejected_and_never_written(tmp_path, settings, build, member, reason):
    source = build(tmp_path)
    before = tree(tmp_path)
    run = run_source(source, settings)
    assert reason in only_rejection(run, source, member)
    assert_good_members_came_through(run)
    spool = settings.home / "tmp"
    index = kept_index_path(str(source), settings)  # the plan's member index of a source tar
    assert tree(tmp_path) - before <= {settings.home, spool, index.parent, index}, \
        "written outside the spool folder"
    assert list(spool.iterdir()) == []  # and the spool files are released
    assert not (Path.cwd().parent / "evil.txt").exists()


def test_absolute_path_is_rejected_and_never_written(tmp_path, settings):
    target = tmp_path / "outside" / "evil.txt"
    source = absolute_path_tar(tmp_path / "t.tar", GOOD, str(target))
    run = run_source(source, settings)
    assert "absolute path" in only_rejection(run, source, str(target))
    assert_good_members_came_through(run)
    assert not target.parent.exists()


def test_links_in_a_tar_are_rejected(tmp_path, settings):
    source = link_tar(tmp_path / "t.tar", GOOD)
    run = run_source(source, settings)
    reasons = run.reasons()
    assert "symbolic link to '/etc/passwd'" in reasons[f"{source}!/link_to_passwd"]
    assert "hard link to '../../etc/passwd'" in reasons[f"{source}!/hard_to_passwd"]
    assert all("never followed" in r for r in reasons.values()) and len(reasons) == 2
    assert_good_members_came_through(run)


def test_devices_and_fifos_in_a_tar_are_rejected(tmp_path, settings):
    source = device_tar(tmp_path / "t.tar", GOOD)
    run = run_source(source, settings)
    assert run.reasons() == {
        f"{source}!/dev_null": "not a regular file (character device)",
        f"{source}!/dev_sda": "not a regular file (block device)",
        f"{source}!/a_fifo": "not a regular file (fifo)",
    }
    assert_good_members_came_through(run)


def test_links_and_fifos_in_a_folder_are_not_followed(tmp_path, settings):
    folder = write_folder(tmp_path / "tree", GOOD)
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "etc_dir").symlink_to("/etc", target_is_directory=True)
    os.mkfifo(folder / "pipe")  # opening it would block forever: it must never be opened
    run = run_source(folder, settings)
    reasons = run.reasons()
    assert "symbolic link to '/etc/passwd'" in reasons[f"{folder}/passwd"]
    assert "symbolic link to '/etc'" in reasons[f"{folder}/etc_dir"]
    assert reasons[f"{folder}/pipe"] == "not a regular file (fifo)"
    assert_good_members_came_through(run)


def test_zip_bomb_member_is_rejected_and_the_rest_goes_on(tmp_path, settings):
    source = zip_bomb(tmp_path / "bomb.zip", GOOD)
    run = run_source(source, settings)
    assert "max_compression_ratio" in only_rejection(run, source, "bomb.txt")
    assert_good_members_came_through(run)


def test_zip_bomb_with_a_lying_header_is_rejected(tmp_path, settings):
    """A central directory that declares the bomb tiny: the real bytes decide."""
    source = zip_bomb(tmp_path / "bomb.zip", GOOD, size=8 << 20)
    lie_about_size(source, "bomb.txt", declared=1 << 10)
    run = run_source(source, settings)
    assert only_rejection(run, source, "bomb.txt")
    assert_good_members_came_through(run)


def lie_about_size(path: Path, member: str, declared: int) -> None:
    """Patch the zip64 extra field of ``member``'s central header to a smaller size."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(member).header_offset
    # central header: signature PK\1\2 ... relative offset of local header at +42
    for start in range(len(data) - 46):
        if data[start:start + 4] == b"PK\x01\x02" and \
                struct.unpack_from("<I", data, start + 42)[0] in (offset, 0xFFFFFFFF):
            name_len, extra_len = struct.unpack_from("<HH", data, start + 28)
            if data[start + 46:start + 46 + name_len] == member.encode():
                _patch_sizes(data, start, name_len, extra_len, declared)
    path.write_bytes(bytes(data))


def _patch_sizes(data: bytearray, start: int, name_len: int, extra_len: int, size: int) -> None:
    if struct.unpack_from("<I", data, start + 24)[0] != 0xFFFFFFFF:
        struct.pack_into("<I", data, start + 24, size)
        return
    extra = start + 46 + name_len
    end = extra + extra_len
    while extra < end:
        tag, length = struct.unpack_from("<HH", data, extra)
        if tag == 0x0001:  # zip64: uncompressed size comes first
            struct.pack_into("<Q", data, extra + 4, size)
        extra += 4 + length


def test_targz_bomb_stops_the_archive_after_the_good_members(tmp_path, settings):
    source = targz_bomb(tmp_path / "bomb.tgz", GOOD)
    run = run_source(source, settings)
    assert_good_members_came_through(run)
    [rejected] = run.rejected
    assert rejected.uri == str(source) and "max_compression_ratio" in rejected.reason
    assert run.order[-1] is rejected


def test_a_zip_member_named_slash_is_a_rejection_not_a_silent_loss(tmp_path, settings):
    """Found by fuzzing: an entry named '/' looks like a folder, so its bytes vanished."""
    source = write_zip(tmp_path / "a.zip", GOOD, {"/": b"bytes behind a folder name"})
    run = run_source(source, settings)
    assert_good_members_came_through(run)
    assert "absolute path" in only_rejection(run, source, "/")


def test_limits_hold_per_archive_so_a_folder_of_archives_is_read_whole(tmp_path, settings):
    """Each archive is a shard with its own limits: a folder holding more members than
    max_members in all is read completely while no one archive passes the limit."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("a", "b", "c"):
        many_members_tar(folder / f"{name}.tar", 3)
    run = run_source(folder, settings.model_copy(update={"max_members": 3}))
    assert len(run.entries) == 9 and run.rejected == []
    many_members_tar(folder / "d.tar", 4)  # one archive over the limit stops alone
    run = run_source(folder, settings.model_copy(update={"max_members": 3}))
    assert len(run.entries) == 12
    [rejected] = run.rejected
    assert rejected.uri == str(folder / "d.tar") and "max_members=3" in rejected.reason


def test_too_many_members_stops_the_source_with_one_rejection(tmp_path, settings):
    source = many_members_tar(tmp_path / "many.tar", 6)
    run = run_source(source, settings.model_copy(update={"max_members": 4}))
    assert len(run.entries) == 4
    [rejected] = run.rejected
    assert rejected.uri == str(source) and "max_members=4" in rejected.reason
    assert run.order[-1] is rejected


def test_total_bytes_limit_stops_the_source(tmp_path, settings):
    files = {f"f{i}.txt": bytes([65 + i]) * 1000 for i in range(5)}
    source = write_zip(tmp_path / "a.zip", files)
    run = run_source(source, settings.model_copy(update={"max_total_bytes": 2500}))
    assert [e.item.member for e in run.entries] == ["f0.txt", "f1.txt"]
    [rejected] = run.rejected
    assert "max_total_bytes=2500" in rejected.reason and run.order[-1] is rejected


@pytest.mark.parametrize("form", ["tar", "tgz", "zip", "folder"])
def test_oversized_member_is_rejected_and_the_next_one_read(tmp_path, settings, form):
    files = {"a_small.txt": b"small", "b_big.txt": os.urandom(4096), "c_small.txt": b"tiny"}
    writers = {"tar": lambda: write_tar(tmp_path / "a.tar", files),
               "tgz": lambda: write_tar(tmp_path / "a.tgz", files),
               "zip": lambda: write_zip(tmp_path / "a.zip", files),
               "folder": lambda: write_folder(tmp_path / "tree", files)}
    source = writers[form]()
    run = run_source(source, settings.model_copy(update={"max_member_bytes": 1024}))
    assert set(run.by_member()) == {"a_small.txt", "c_small.txt"}
    [rejected] = run.rejected
    assert rejected.uri.endswith("b_big.txt") and "max_member_bytes=1024" in rejected.reason


def test_a_damaged_header_mid_archive_is_a_rejection_not_the_archives_end(tmp_path,
                                                                          settings):
    source = targz_with_damaged_header(tmp_path / "damaged.tgz", GOOD)
    run = run_source(source, settings)
    assert_good_members_came_through(run)
    assert not {"after_1.txt", "after_2.txt"} & set(run.by_member())
    [rejected] = run.rejected
    assert rejected.uri == str(source) and "damaged header at byte" in rejected.reason


@pytest.mark.parametrize("tail, damaged", [(bytes(100), False), (b"junk" * 25, True)])
def test_an_archive_cut_in_its_padding_ends_clean_and_a_short_junk_block_is_damage(
        tmp_path, settings, tail, damaged):
    import gzip
    import io

    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        for name, data in GOOD.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        end = archive.offset  # after the last member's data, before the end marker
    source = tmp_path / "cut.tgz"
    source.write_bytes(gzip.compress(plain.getvalue()[:end] + tail))
    run = run_source(source, settings)
    assert_good_members_came_through(run)
    assert [("damaged header" in r.reason) for r in run.rejected] == ([True] if damaged else [])


def test_truncated_targz_yields_what_it_could_then_a_rejection(tmp_path, settings):
    source = truncated_targz(tmp_path / "cut.tgz", GOOD)
    run = run_source(source, settings)
    assert_good_members_came_through(run)
    [rejected] = run.rejected
    assert rejected.uri == str(source) and "truncated or corrupt" in rejected.reason
    assert list((settings.home / "tmp").iterdir()) == []


def test_garbage_named_zip_is_one_rejection(tmp_path, settings):
    source = corrupt_zip(tmp_path / "bad.zip")
    run = run_source(source, settings)
    assert run.entries == []
    [rejected] = run.rejected
    assert rejected.uri == str(source) and "not a readable zip" in rejected.reason


def test_garbage_named_tgz_is_one_rejection(tmp_path, settings):
    source = tmp_path / "bad.tgz"
    source.write_bytes(os.urandom(2048))
    [rejected] = run_source(source, settings).rejected
    assert rejected.stage is Stage.SOURCE and "tar" in rejected.reason


def test_corrupt_zip_member_is_rejected_and_the_rest_goes_on(tmp_path, settings):
    source = zip_with_corrupt_member(tmp_path / "a.zip", GOOD)
    run = run_source(source, settings)
    assert "cannot read" in only_rejection(run, source, "damaged.txt")
    assert_good_members_came_through(run)


@pytest.mark.parametrize("form", ["tar", "zip", "folder"])
def test_zero_byte_file_is_rejected(tmp_path, settings, form):
    files = {**GOOD, "empty.txt": b""}
    source = {"tar": lambda: write_tar(tmp_path / "a.tar", files),
              "zip": lambda: write_zip(tmp_path / "a.zip", files),
              "folder": lambda: write_folder(tmp_path / "tree", files)}[form]()
    run = run_source(source, settings)
    assert run.reasons() == {run.rejected[0].uri: "empty file (0 bytes)"}
    assert run.rejected[0].uri.endswith("empty.txt")
    assert_good_members_came_through(run)


def test_wrong_extension_is_judged_by_content(tmp_path, settings):
    source = write_tar(tmp_path / "a.tar", {"holiday.mp4": image_bytes("PNG")})
    [entry] = run_source(source, settings).entries
    assert entry.item.kind is Kind.IMAGE and entry.item.mime == "image/png"


def test_nesting_bomb_stops_at_max_nesting(tmp_path, settings):
    inner = write_zip(tmp_path / "level0.zip", {"x.txt": b"deepest"}).read_bytes()
    for level in range(1, 6):
        inner = write_zip(tmp_path / f"level{level}.zip", {f"level{level - 1}.zip": inner,
                                                          "ok.txt": f"l{level}".encode()}).read_bytes()
    source = write_tar(tmp_path / "outer.tar", {"level5.zip": inner})
    run = run_source(source, settings.model_copy(update={"max_nesting": 2}))
    assert set(run.by_member()) == {"level5.zip!/ok.txt", "level5.zip!/level4.zip!/ok.txt"}
    [rejected] = run.rejected
    assert rejected.uri.endswith("level5.zip!/level4.zip!/level3.zip")
    assert "max_nesting=2" in rejected.reason


def test_hostile_nested_archive_does_not_stop_the_outer_one(tmp_path, settings):
    cut = truncated_targz(tmp_path / "cut.tgz", {"inner.txt": b"inside"}).read_bytes()
    source = write_tar(tmp_path / "outer.tar", {"a.txt": b"alpha", "cut.tgz": cut, "z.txt": b"zed"})
    run = run_source(source, settings)
    assert set(run.by_member()) == {"a.txt", "cut.tgz!/inner.txt", "z.txt"}
    [rejected] = run.rejected
    assert rejected.uri == f"{source}!/cut.tgz" and "truncated" in rejected.reason


def test_tar_with_unsupported_entry_type(tmp_path, settings):
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("contig")
        info.type = b"V"  # a GNU volume header: neither a file nor anything we handle
        archive.addfile(info)
    run = run_source(tmp_path / "a.tar", settings)
    assert run.entries == [] and len(run.rejected) == 1


@pytest.mark.parametrize("inner", [b"\x00", bytes(tarfile.BLOCKSIZE * 2)],
                         ids=["one-zero-byte", "end-marker-only"])
def test_an_archive_with_no_members_is_a_rejection_not_a_silence(tmp_path, settings, inner):
    """Found by the fuzzer: a nested tar that holds nothing yielded neither an entry nor
    a rejection, so its bytes vanished from the report."""
    import io

    outer = tmp_path / "outer.tar"
    with tarfile.open(outer, "w") as tf:
        info = tarfile.TarInfo("inner.tar")
        info.size = len(inner)
        tf.addfile(info, io.BytesIO(inner))
    records = list(iter_source(outer, settings))
    assert [(r.uri, r.reason) for r in records] == [
        (f"{outer}!/inner.tar", "an archive with no members: nothing in it to ingest")]
