"""ingest.sources on good data: every source form gives the same items, nesting,
duplicates, sidecars and manifests, spool-file lifetime, user errors."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import fsspec
import pytest
from hostile import (
    image_bytes,
    run_source,
    sample_files,
    write_folder,
    write_tar,
    write_zip,
)
from PIL import Image

from ingest.manifest import ManifestError
from ingest.sources import SourceEntry, iter_source, normalise_source
from schemas import Kind, Settings, Stage

EXPECTED_KINDS = {
    "photo.jpg": Kind.IMAGE,
    "camera.png": Kind.IMAGE,
    "notes/readme.txt": Kind.TEXT,
    "notes/todo.md": Kind.TEXT,
    "media/clip.mp4": Kind.VIDEO,
    "media/tone.wav": Kind.AUDIO,
    "sensors/room.depth.png": Kind.DEPTH,
    "sensors/walk.imu.csv": Kind.IMU,
    "zz_copy/photo_again.jpg": Kind.IMAGE,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return sample_files(tmp_path_factory.mktemp("media"))


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def spool_files(settings: Settings) -> list[Path]:
    return list((settings.home / "tmp").iterdir())


def memory_copy(local: Path, url: str) -> str:
    fs = fsspec.filesystem("memory")
    if local.is_dir():
        for path in sorted(local.rglob("*")):
            if path.is_file():
                fs.pipe(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes())
    else:
        fs.pipe(url, local.read_bytes())
    return url


def every_source_form(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    folder = write_folder(root / "tree", files)
    forms = {
        "folder": str(folder),
        "tar": str(write_tar(root / "a.tar", files)),
        "tgz": str(write_tar(root / "a.tgz", files)),
        "tar.gz": str(write_tar(root / "a.tar.gz", files)),
        "zip": str(write_zip(root / "a.zip", files)),
    }
    forms["file-url-tgz"] = "file://" + forms["tgz"]
    forms["file-url-folder"] = "file://" + forms["folder"]
    forms["memory-zip"] = memory_copy(root / "a.zip", f"memory://{root.name}/a.zip")
    forms["memory-folder"] = memory_copy(folder, f"memory://{root.name}/tree")
    return forms


def test_every_source_form_gives_the_same_items(tmp_path, files, settings):
    for form, source in every_source_form(tmp_path, files).items():
        run = run_source(source, settings)
        found = {m: (e.item.item_id, e.item.kind, e.duplicate, e.item.meta)
                 for m, e in run.by_member().items()}
        expected = {m: (hashlib.sha256(files[m]).hexdigest(), k, m.startswith("zz_copy"),
                        json.loads(files[f"{m}.json"]) if f"{m}.json" in files else {})
                    for m, k in EXPECTED_KINDS.items()}
        assert found == expected, form
        assert run.rejected == [], form
        for entry in run.entries:
            assert entry.item.archive == normalise_source(source)
            assert entry.item.size_bytes == len(files[entry.item.member])
            assert entry.item.locations == (entry.item.source_uri,)
            assert entry.item.source_uri.startswith(normalise_source(source)) and entry.item.member in entry.item.source_uri
    assert spool_files(settings) == []


def test_items_carry_location_mime_mtime_and_sidecar_meta(tmp_path, files, settings):
    source = write_tar(tmp_path / "a.tar", files)
    items = {e.item.member: e.item for e in run_source(source, settings).entries}
    photo = items["photo.jpg"]
    assert photo.locations == (f"{source}!/photo.jpg",)
    assert photo.mime == "image/jpeg" and items["media/tone.wav"].mime == "audio/wav"
    assert photo.mtime == 1_700_000_000  # hostile.add_tar_file sets it
    assert photo.meta == {"caption": "an astronaut", "year": 1983}
    assert "photo.jpg.json" not in items  # a sidecar is metadata, not an item


def test_folder_files_are_read_in_place(tmp_path, files, settings):
    folder = write_folder(tmp_path / "tree", files)
    entry = next(e for e in iter_source(folder, settings) if isinstance(e, SourceEntry))
    assert entry.path == folder / entry.item.member
    assert entry.item.mtime == (folder / entry.item.member).stat().st_mtime
    entry.release()
    assert entry.path.is_file()  # release never deletes the user's file


def test_duplicate_carries_only_its_new_location(tmp_path, files, settings):
    source = write_zip(tmp_path / "a.zip", files)
    entries = run_source(source, settings).by_member()
    first, again = entries["photo.jpg"], entries["zz_copy/photo_again.jpg"]
    assert not first.duplicate and again.duplicate
    assert again.item.item_id == first.item.item_id
    assert again.item.locations == (f"{source}!/zz_copy/photo_again.jpg",)


def test_spool_files_live_until_release(tmp_path, files, settings):
    stream = iter_source(write_tar(tmp_path / "a.tgz", files), settings)
    entries = [e for e in stream if isinstance(e, SourceEntry)]
    assert {e.path for e in entries} == set(spool_files(settings))
    assert all(e.path.parent == settings.home / "tmp" for e in entries)
    for entry in entries:
        with entry:
            assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.item.item_id
    assert spool_files(settings) == []


def test_closing_the_stream_early_leaves_only_handed_out_files(tmp_path, files, settings):
    stream = iter_source(write_tar(tmp_path / "a.tar", files), settings)
    first = next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert spool_files(settings) == [first.path]
    first.release()
    assert spool_files(settings) == []


def test_spool_dir_can_be_given(tmp_path, files, settings):
    spool = tmp_path / "my_spool"
    stream = iter_source(write_zip(tmp_path / "a.zip", files), settings, spool_dir=spool)
    entry = next(stream)
    assert entry.path.parent == spool
    entry.release()
    stream.close()  # type: ignore[attr-defined]


def nested_tar(tmp_path: Path) -> Path:
    deeper = write_zip(tmp_path / "deeper.zip", {"y.txt": b"deep down"})
    inner = write_zip(tmp_path / "inner.zip", {"x.png": image_bytes("PNG"),
                                                "deeper.zip": deeper.read_bytes()})
    return write_tar(tmp_path / "outer.tar", {"top.txt": b"on top",
                                              "shards/inner.zip": inner.read_bytes()})


def test_nested_archives_are_followed_with_bang_paths(tmp_path, settings):
    source = nested_tar(tmp_path)
    run = run_source(source, settings.model_copy(update={"max_nesting": 2}))
    assert set(run.by_member()) == {"top.txt", "shards/inner.zip!/x.png",
                                    "shards/inner.zip!/deeper.zip!/y.txt"}
    y = run.by_member()["shards/inner.zip!/deeper.zip!/y.txt"]
    assert y.item.source_uri == f"{source}!/shards/inner.zip!/deeper.zip!/y.txt"
    assert y.item.item_id == hashlib.sha256(b"deep down").hexdigest()
    assert run.rejected == [] and spool_files(settings) == []


@pytest.mark.parametrize(("max_nesting", "members", "refused"), [
    (1, {"top.txt", "shards/inner.zip!/x.png"}, "shards/inner.zip!/deeper.zip"),
    (0, {"top.txt"}, "shards/inner.zip"),
])
def test_nesting_beyond_the_limit_is_rejected(tmp_path, settings, max_nesting, members, refused):
    source = nested_tar(tmp_path)
    run = run_source(source, settings.model_copy(update={"max_nesting": max_nesting}))
    assert set(run.by_member()) == members
    assert [r.uri for r in run.rejected] == [f"{source}!/{refused}"]
    assert "max_nesting" in run.rejected[0].reason and run.rejected[0].stage is Stage.SOURCE


def test_archives_inside_a_folder_are_followed(tmp_path, settings):
    folder = tmp_path / "tree"
    write_folder(folder, {"a.txt": b"alpha"})
    write_tar(folder / "b.tgz", {"c.txt": b"gamma"})
    assert set(run_source(folder, settings).by_member()) == {"a.txt", "b.tgz!/c.txt"}


def test_manifest_meta_and_kind_override(tmp_path, files, settings):
    source = write_tar(tmp_path / "a.tar", {**files, "sensors/raw.dat": b"\x01\x02\x03"})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,kind,caption,site\n"
                        "photo.jpg,,from the manifest,lab\n"
                        "./sensors/raw.dat,imu,,field\n")
    items = {e.item.member: e.item for e in run_source(source, settings, manifest=manifest).entries}
    # the manifest wins over the sidecar key by key; other sidecar keys stay
    assert items["photo.jpg"].meta == {"caption": "from the manifest", "year": 1983, "site": "lab"}
    assert items["sensors/raw.dat"].kind is Kind.IMU
    assert items["sensors/raw.dat"].meta == {"site": "field"}


def test_unknown_file_is_rejected_at_probe_stage(tmp_path, settings):
    source = write_tar(tmp_path / "a.tar", {"blob.xyz": b"\x01\x02\x03 not media"})
    [rejected] = run_source(source, settings).rejected
    assert rejected.stage is Stage.PROBE and "unsupported file type" in rejected.reason
    assert rejected.item_id == hashlib.sha256(b"\x01\x02\x03 not media").hexdigest()


def test_orphan_and_invalid_sidecars_are_reported(tmp_path, settings):
    source = write_zip(tmp_path / "a.zip", {"a.txt": b"alpha", "a.txt.json": b"[1, 2]",
                                            "info.json": b'{"k": 1}'})
    run = run_source(source, settings)
    assert run.by_member()["a.txt"].item.meta == {}
    reasons = run.reasons()
    assert "invalid sidecar JSON" in reasons[f"{source}!/a.txt.json"]
    assert "no file 'info'" in reasons[f"{source}!/info.json"]


def test_sidecar_before_its_file_is_kept(tmp_path, settings):
    with tarfile.open(tmp_path / "a.tar", "w") as archive:
        for name, data in (("b.txt.json", b'{"k": "v"}'), ("a.txt", b"alpha"), ("b.txt", b"beta")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    run = run_source(tmp_path / "a.tar", settings)
    assert run.by_member()["b.txt"].item.meta == {"k": "v"} and run.rejected == []


def test_missing_source_is_a_user_error(tmp_path, settings):
    with pytest.raises(FileNotFoundError, match="source not found"):
        iter_source(tmp_path / "nope.tar", settings)
    with pytest.raises(FileNotFoundError, match="source not found"):
        iter_source(f"file://{tmp_path}/nope.zip", settings)


def test_a_non_archive_url_is_not_a_source(tmp_path, settings):
    (tmp_path / "x.jpg").write_bytes(image_bytes("JPEG"))
    with pytest.raises(ValueError, match="not a folder or a supported archive"):
        iter_source(memory_copy(tmp_path / "x.jpg", f"memory://{tmp_path.name}/x.jpg"), settings)


def test_invalid_manifest_is_a_user_error(tmp_path, settings):
    (tmp_path / "m.csv").write_text("name,caption\na.jpg,x\n")
    write_zip(tmp_path / "a.zip", {"a.txt": b"alpha"})
    with pytest.raises(ManifestError, match="'path' or 'member'"):
        iter_source(tmp_path / "a.zip", settings, manifest=tmp_path / "m.csv")


def test_s3_without_the_extra_names_it(settings, monkeypatch):
    import importlib
    import sys

    # As on an install without the extra: the package cannot be imported (the dev
    # environment has it, for the S3 tests), and fsspec has not registered it yet.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    registered = importlib.import_module("fsspec.registry")._registry
    monkeypatch.delitem(registered, "s3", raising=False)
    with pytest.raises(ImportError, match=r"mediabind\[s3\]"):
        iter_source("s3://bucket/archive.tar", settings)


def test_zip_of_stored_members_and_directories(tmp_path, settings):
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.mkdir("empty_dir")
        archive.writestr("d/a.txt", b"alpha")
    assert set(run_source(tmp_path / "a.zip", settings).by_member()) == {"d/a.txt"}


def test_a_single_media_file_is_a_source_of_one_item(tmp_path):
    from ingest.sources import iter_source

    clip = tmp_path / "photos" / "cat.png"
    clip.parent.mkdir()
    Image.new("RGB", (32, 24), "orange").save(clip)
    (entry,) = list(iter_source(str(clip)))
    assert entry.item.kind == Kind.IMAGE
    # its own archive, not its folder: a re-embed or prune of it never reaches its neighbours
    assert (entry.item.archive, entry.item.member) == (str(clip), "cat.png")
    assert entry.item.source_uri == str(clip)
    assert entry.path == clip  # read in place, not copied


def test_sources_are_recorded_in_one_normal_form(tmp_path, monkeypatch):
    from ingest.sources import normalise_source

    monkeypatch.chdir(tmp_path)
    assert normalise_source("media/") == str(tmp_path / "media")
    assert normalise_source(f"file://{tmp_path}/media/") == str(tmp_path / "media")
    assert normalise_source("s3://bucket/media/") == "s3://bucket/media"
