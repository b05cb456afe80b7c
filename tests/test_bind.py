"""`mediabind bind`: a new modality trained against frozen image vectors, end to end on CPU.

The paired data (tests/bind_data.py) is generated so the new signal carries the
image's content, and the tiny preset's random vision tower gives the targets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from bind_data import CHANNELS, SIDE, write_pairs

from embed_workers.bind import BindRequest, bind, evaluate_registered
from embed_workers.bind.artifact import load_extension
from embed_workers.bind.pairs import read_pairs, split
from embed_workers.bind.train import TrainOptions, read_checkpoint
from schemas import Modality, Settings
from schemas.extension import (
    ExtensionError,
    Geometry,
    TrunkSpec,
    extensions_dir,
    read_spec,
    registered,
    version_dir,
)

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = Geometry(channels=CHANNELS, samples=SIDE, window=8)
PAIRS = 1000
HOLDOUT = 0.25  # about 250 held-out pairs


def _request(manifest: Path, **changes) -> BindRequest:
    fields = {"name": "radar", "pairs": manifest, "layout": "series", "geometry": GEOMETRY,
              "trunk": TrunkSpec(64, 2, 4), "holdout": HOLDOUT,
              "options": TrainOptions(epochs=30, batch_size=128)}
    fields.update(changes)
    return BindRequest(**fields)


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """One trained, registered extension for the tests that read it."""
    root = tmp_path_factory.mktemp("bind")
    manifest = write_pairs(root / "data", PAIRS, seed=0, labels=True)
    settings = Settings(home=root / "home", preset="imagebind_tiny")
    started = time.perf_counter()
    result = bind(_request(manifest), settings, print)
    print(f"bind: {PAIRS} pairs trained, evaluated and registered in "
          f"{time.perf_counter() - started:.1f} s")
    return result, settings, manifest


@pytest.mark.slow
def test_held_out_recall_is_far_above_chance(bound):
    result, _settings, _manifest = bound
    report = result.report
    forward = next(r for r in report.retrieval if r.direction == "radar -> image")
    backward = next(r for r in report.retrieval if r.direction == "image -> radar")
    print(report.text())
    assert report.held_out >= 200
    assert forward.chance[1] == pytest.approx(1 / report.held_out)
    assert forward.recall[1] >= 10 * forward.chance[1], report.text()
    assert backward.recall[1] >= 10 * backward.chance[1], report.text()
    assert not report.meaningful and "random weights" in report.notes[0]
    assert [r.direction for r in report.emergent] == ["radar -> text"]  # labels were given
    saved = json.loads((result.run_dir / "report.json").read_text())
    assert saved["version"] == result.spec.version and saved["held_out"] == report.held_out
    assert (result.run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_registered_extension_is_data_and_reloads_equal(bound):
    result, settings, _manifest = bound
    spec = result.spec
    folder = version_dir(settings.home, spec.name, spec.version)
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE.txt", "spec.json",
                                                        "weights.safetensors"]
    assert read_spec(folder) == spec
    assert registered(settings.home) == {"radar": spec}
    assert "licence" in spec.license and spec.license in (folder / "LICENSE.txt").read_text()
    raw = (folder / "weights.safetensors").read_bytes()  # data only: a JSON table + tensors
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["license"] == spec.license
    assert all(entry["dtype"] == "F32" for key, entry in header.items() if key != "__metadata__")
    model = load_extension(settings.home, "radar", spec.base_model_id)
    views = torch.from_numpy(np.random.default_rng(1).random((4, CHANNELS, SIDE), np.float32))
    first, again = model.embed(views), load_extension(settings.home, "radar",
                                                      spec.base_model_id).embed(views)
    assert torch.equal(first, again)
    assert torch.allclose(first.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.mark.slow
def test_eval_reuses_the_cached_targets_and_agrees(bound):
    result, settings, manifest = bound
    caches = sorted(result.run_dir.glob("targets-vision-*.npy"))
    stamps = [p.stat().st_mtime_ns for p in caches]
    report = evaluate_registered(_request(manifest), settings)
    assert sorted(result.run_dir.glob("targets-vision-*.npy")) == caches
    assert [p.stat().st_mtime_ns for p in caches] == stamps  # read back, not recomputed
    assert report.retrieval == result.report.retrieval


@pytest.mark.slow
def test_an_extension_of_another_base_model_is_refused(bound):
    result, settings, _manifest = bound
    with pytest.raises(ExtensionError, match="trained against imagebind_tiny_s0.*imagebind_mid_s0"):
        load_extension(settings.home, "radar", "imagebind_mid_s0")
    mid = Settings(home=settings.home, preset="imagebind_mid")
    with pytest.raises(ExtensionError, match="would not share the space"):
        evaluate_registered(_request(bound[2]), mid)


# --- bad input: a clear error, and nothing registered -------------------------------------

def _assert_nothing_registered(home: Path) -> None:
    assert registered(home) == {}
    assert not extensions_dir(home).exists()
    assert [m.value for m in Modality] == ["vision", "text", "audio", "depth", "thermal", "imu"]


def test_pairs_that_point_at_missing_files_are_named(tmp_path):
    manifest = write_pairs(tmp_path / "data", 6)
    (tmp_path / "data" / "samples" / "00002.radar.npy").unlink()
    (tmp_path / "data" / "images" / "00004.png").unlink()
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    with pytest.raises(ExtensionError, match=r"2 file\(s\) not found: row 3: sample .*00002"
                                             r".*row 5: image .*00004"):
        bind(_request(manifest), settings)
    _assert_nothing_registered(settings.home)


def test_inconsistent_geometry_is_refused_with_the_rows(tmp_path):
    manifest = write_pairs(tmp_path / "data", 6)
    np.save(tmp_path / "data" / "samples" / "00001.radar.npy", np.ones((SIDE, 5), np.float32))
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    with pytest.raises(ExtensionError, match=r"1 of 6 samples do not fit .*6 channels.*row 2 "
                                             r"\(00001.radar.npy\).*\[224, 5\]"):
        bind(_request(manifest), settings)
    with pytest.raises(ExtensionError, match="multiple of window"):
        bind(_request(manifest, geometry=Geometry(channels=CHANNELS, samples=SIDE, window=10)),
             settings)
    _assert_nothing_registered(settings.home)


@pytest.mark.parametrize("name", ["depth", "vision", "image", "video", "Radar", "x"])
def test_names_of_built_ins_and_bad_names_are_refused(tmp_path, name):
    manifest = write_pairs(tmp_path / "data", 4)
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    with pytest.raises(ExtensionError, match="built-in name|lower-case letters"):
        bind(_request(manifest, name=name), settings)
    _assert_nothing_registered(settings.home)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    manifest = write_pairs(tmp_path / "data", 4)
    (tmp_path / "data" / "images" / "00000.png").unlink()
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path / "home"))
    code = main(["bind", "radar", "--pairs", str(manifest), "--layout", "series"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"mediabind bind: error: {manifest}: 1 file(s) not found: row 1: image "
                   f"{tmp_path / 'data' / 'images' / '00000.png'}"]


# --- resume ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    manifest = write_pairs(tmp_path / "data", 120)
    env = {**os.environ, "MEDIABIND_HOME": str(tmp_path / "home"),
           "MEDIABIND_PRESET": "imagebind_tiny"}
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "flows.cli", "bind", "radar", "--pairs", str(manifest),
               "--layout", "series", "--channels", str(CHANNELS), "--samples", str(SIDE),
               "--epochs", "12", "--batch-size", "32", "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    before = _wait_for_epochs(run_dir, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    done_before = len(before["history"]["train_loss"])
    assert done_before < 12 and registered(tmp_path / "home") == {}

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed_at = int(second.stderr.split("resuming from the checkpoint after epoch ")[1].split()[0])
    assert resumed_at >= done_before
    after = read_checkpoint(run_dir)["history"]
    assert len(after["train_loss"]) == 12
    assert after["train_loss"][:done_before] == before["history"]["train_loss"]
    assert f"epoch {resumed_at + 1}/12" in second.stderr
    assert f"epoch {resumed_at}/12" not in second.stderr  # finished epochs are not run again
    assert list(registered(tmp_path / "home")) == ["radar"]


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        state = read_checkpoint(run_dir) if (run_dir / "checkpoint.pt").exists() else None
        if state is not None and len(state["history"]["train_loss"]) >= epochs:
            return state
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint with {epochs} epochs in {run_dir} after 300 s")


# --- ingest and search: the new modality lands in the space ---------------------------------

INGESTED = 40  # held-out pairs whose files go into the archive


def _archive(root: Path, manifest: Path, rows: list[int]) -> Path:
    """A folder of held-out radar samples and a few photos (built-in points beside them)."""
    folder = root / "archive"
    folder.mkdir()
    data = manifest.parent
    for row in rows:
        shutil.copy(data / "samples" / f"{row:05d}.radar.npy", folder)
    for row in rows[:3]:
        shutil.copy(data / "images" / f"{row:05d}.png", folder / f"photo_{row:05d}.png")
    return folder


def _register_copy(spec, from_home: Path, to_home: Path) -> None:
    """Register an already written extension under another HOME (what shipping does)."""
    from embed_workers.bind.artifact import activate

    target = version_dir(to_home, spec.name, spec.version)
    shutil.copytree(version_dir(from_home, spec.name, spec.version), target)
    activate(to_home, spec.name, spec.version)


@pytest.mark.slow
def test_ingested_extension_files_are_found_by_their_images(bound, tmp_path, monkeypatch,
                                                           capsys):
    from flows.run import start_run
    from search import MediaSearch
    from search.store import open_store

    result, trained, manifest = bound
    spec = result.spec
    pairs = read_pairs(manifest)
    held = split(pairs, HOLDOUT, 0)[1][:INGESTED]
    folder = _archive(tmp_path, manifest, held)
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")

    # Before the extension is registered its files are of no known kind: refused.
    first = start_run(str(folder), settings).report
    refused = [r for r in first.rejected if r.uri.endswith(".radar.npy")]
    assert len(refused) == INGESTED and "unsupported file type" in refused[0].reason

    _register_copy(spec, trained.home, settings.home)
    second = start_run(str(folder), settings).report
    assert not second.rejected, second.rejected[:3]
    assert second.items_ingested["radar"] == INGESTED and second.items_unchanged == 3  # photos

    with open_store(settings) as store:
        points = store.scroll({"modality": "radar"}, limit=10_000)
    assert {p.payload["extension_version"] for p in points} == {spec.version}
    assert {p.payload["kind"] for p in points} == {"radar"}

    # Each held-out image finds its own sample first, as the model's vectors rank them.
    model = load_extension(settings.home, "radar", spec.base_model_id)
    views = torch.from_numpy(np.stack([np.load(p.sample) for p in (pairs[r] for r in held)])
                             .transpose(0, 2, 1).copy())
    firsts = 0
    with MediaSearch(settings) as ms:
        images = [pairs[r].image for r in held]
        targets = ms._encoder_for({Modality.VISION}).encode_segments(
            [s for image in images for s in _image_segments(image, settings)])
        expected = (targets @ model.embed(views).numpy().T).argmax(axis=1)
        for i, image in enumerate(images):
            hits = ms.search(image=image, modalities="radar", limit=3).hits
            assert hits[0].source_uri.endswith(f"{held[expected[i]]:05d}.radar.npy")
            firsts += int(expected[i] == i)
        found = ms.search(inputs={"radar": pairs[held[0]].sample}, modalities="vision", limit=3)
        photos = [f"photo_{row:05d}.png" for row in held[:3]]
        assert sorted(h.source_uri.rsplit("/", 1)[-1] for h in found.hits) == sorted(photos)
    print(f"{firsts} of {INGESTED} held-out images find their own sample first "
          f"(chance {1 / INGESTED:.3f} each)")
    assert firsts >= 0.8 * INGESTED
    _check_web_page(settings, pairs[held[0]].sample)
    _check_cli(settings, pairs[held[0]].sample, monkeypatch, capsys)

    # Retrained: new points for its own files, the old version's removed, nothing else
    # embedded again, and no search ever sees two versions.
    with open_store(settings) as store:
        photos = {p.id: p.payload["run_id"] for p in store.scroll({"modality": "vision"}, 100)}
    again = write_pairs(tmp_path / "again", 200, seed=3)
    retrained = bind(_request(again, options=TrainOptions(epochs=2, batch_size=64),
                              run_dir=tmp_path / "retrain"), settings).spec
    assert retrained.version != spec.version
    with MediaSearch(settings) as ms:  # the old version's points are hidden at once
        assert not ms.search(image=images[0], modalities="radar").hits
    third = start_run(str(folder), settings).report
    assert third.items_ingested == {"radar": INGESTED} and third.items_unchanged == 3
    with open_store(settings) as store:
        versions = Counter(p.payload["extension_version"]
                           for p in store.scroll({"modality": "radar"}, 10_000))
        assert versions == {retrained.version: len(points)}
        assert {p.id: p.payload["run_id"]
                for p in store.scroll({"modality": "vision"}, 100)} == photos
    with MediaSearch(settings) as ms:
        hits = ms.search(image=images[0], modalities="radar", limit=INGESTED).hits
    assert len(hits) == INGESTED


def _image_segments(path: Path, settings: Settings):
    from embed_workers.bind.targets import file_segments

    return file_segments(path, None, Modality.VISION, settings)


@pytest.mark.slow
def test_files_of_an_extension_for_another_base_are_rejected_and_the_rest_ingests(bound,
                                                                                   tmp_path):
    from flows.run import start_run

    result, trained, manifest = bound
    folder = _archive(tmp_path, manifest, [0, 1, 2])
    settings = Settings(home=tmp_path / "home", preset="imagebind_mid")
    _register_copy(result.spec, trained.home, settings.home)
    report = start_run(str(folder), settings).report
    reasons = {r.uri.rsplit("/", 1)[-1]: r.reason for r in report.rejected}
    assert sorted(reasons) == ["00000.radar.npy", "00001.radar.npy", "00002.radar.npy"]
    assert all("trained against preset imagebind_tiny" in r for r in reasons.values())
    assert report.items_ingested == {"vision": 3}  # the photos, untouched by the extension


def _check_web_page(settings: Settings, sample: Path) -> None:
    """The search page takes an extension's file as an upload and draws its points."""
    from fastapi.testclient import TestClient

    from web.app import create_app

    with TestClient(create_app(settings), base_url="http://127.0.0.1") as api:
        with sample.open("rb") as f:
            found = api.post("/api/search", files=[("file", (sample.name, f, "application/x-npy"))])
        assert found.status_code == 200, found.text
        hits = found.json()["hits"]
        assert hits[0]["member"] == sample.name  # its own file first
        picture = api.get(hits[0]["thumb_url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"


def _check_cli(settings: Settings, sample: Path, monkeypatch, capsys) -> None:
    """`mediabind search --input radar=FILE` finds the file itself first."""
    from flows.cli import main

    monkeypatch.setenv("MEDIABIND_HOME", str(settings.home))
    monkeypatch.setenv("MEDIABIND_PRESET", settings.preset)
    capsys.readouterr()
    assert main(["search", "--input", f"radar={sample}", "--modality", "radar", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["source_uris"][0].endswith(sample.name)
    assert main(["search", "--input", f"sonar={sample}"]) == 2
    assert "unknown query input(s) ['sonar']" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_has_the_emergent_directions_when_labels_and_sounds_are_given(tmp_path):
    manifest = write_pairs(tmp_path / "data", 48, labels=True, sounds=True)
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    report = bind(_request(manifest, holdout=0.5, options=TrainOptions(epochs=1, batch_size=16)),
                  settings).report
    emergent = {r.direction: r for r in report.emergent}
    assert sorted(emergent) == ["radar -> audio", "radar -> text"]
    assert emergent["radar -> audio"].candidates == report.held_out  # one sound per pair
    assert emergent["radar -> text"].candidates == 2  # two distinct captions
    assert emergent["radar -> text"].chance[1] == 0.5
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "home" / "bind" / "radar")
                  .glob("targets-*.npy")) == ["audio", "vision"]


@pytest.mark.slow
def test_a_map_extension_ingests_and_is_searched_by_its_files(tmp_path):
    """Maps cross as [H,W] segments and reach the encoder as one-channel views."""
    from PIL import Image

    from embed_workers.bind.artifact import write_extension
    from embed_workers.model.extension import ExtensionEncoder, init_weights_
    from flows.run import start_run
    from schemas.extension import ExtensionSpec, default_patterns
    from search import MediaSearch

    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    spec = ExtensionSpec("sonar", "map", "imagebind_tiny", "imagebind_tiny_s0",
                         Geometry(height=32, width=32, patch=8), TrunkSpec(32, 1, 2),
                         patterns=default_patterns("sonar", "map"))
    write_extension(init_weights_(ExtensionEncoder(spec), seed=0), settings.home)
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(folder / f"ping{i}.sonar.npy", rng.random((40, 56), np.float32))
    Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(folder / "x.sonar.png")
    report = start_run(str(folder), settings).report
    assert not report.rejected, report.rejected[:2]
    assert report.items_ingested == {"sonar": 4}
    with MediaSearch(settings) as ms:
        for name in ("ping1.sonar.npy", "x.sonar.png"):
            hits = ms.search(inputs={"sonar": folder / name}, limit=4).hits
            assert hits[0].source_uri.endswith(name) and hits[0].score == pytest.approx(1, abs=1e-4)
