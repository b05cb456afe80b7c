"""`mediabind bind`: a new modality trained against frozen image vectors, end to end on CPU.

The paired data (tests/bind_data.py) is generated so the new signal carries the
image's content, and the tiny preset's random vision tower gives the targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embed_workers.bind import BindRequest, bind, evaluate_registered
from embed_workers.bind.artifact import load_extension
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
from tests.bind_data import CHANNELS, SIDE, write_pairs

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
    assert forward.recall[10] >= forward.recall[5] >= forward.recall[1]
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
    manifest = write_pairs(tmp_path / "data", 200)
    env = {**os.environ, "MEDIABIND_HOME": str(tmp_path / "home"),
           "MEDIABIND_PRESET": "imagebind_tiny"}
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "flows.cli", "bind", "radar", "--pairs", str(manifest),
               "--layout", "series", "--channels", str(CHANNELS), "--samples", str(SIDE),
               "--epochs", "20", "--batch-size", "64", "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    before = _wait_for_epochs(run_dir, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    done_before = len(before["history"]["train_loss"])
    assert done_before < 20 and registered(tmp_path / "home") == {}

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed_at = int(second.stderr.split("resuming from the checkpoint after epoch ")[1].split()[0])
    assert resumed_at >= done_before
    after = read_checkpoint(run_dir)["history"]
    assert len(after["train_loss"]) == 20
    assert after["train_loss"][:done_before] == before["history"]["train_loss"]
    assert f"epoch {resumed_at + 1}/20" in second.stderr
    assert f"epoch {resumed_at}/20" not in second.stderr  # finished epochs are not run again
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
