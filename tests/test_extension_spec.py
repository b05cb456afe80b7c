"""Modality extensions: the spec's rules, the sample readers, the encoder and the loss."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from embed_workers.bind.evaluate import recall_at
from embed_workers.bind.pairs import Pair, split
from embed_workers.bind.train import info_nce
from embed_workers.model.extension import ExtensionEncoder, init_weights_
from ingest.decode.base import DecodeError
from ingest.decode.extension import read_views
from schemas.extension import (
    LAYOUTS,
    ExtensionError,
    ExtensionSpec,
    Geometry,
    TrunkSpec,
    default_patterns,
    version_dir,
)


def _spec(layout: str = "series", **changes) -> ExtensionSpec:
    geometry = Geometry(channels=3, samples=64, window=8, height=32, width=32, patch=8)
    fields = {"name": "radar", "layout": layout, "base_preset": "imagebind_tiny",
              "base_model_id": "imagebind_tiny_s0", "geometry": geometry,
              "trunk": TrunkSpec(32, 1, 2),
              "patterns": default_patterns("radar", layout) if layout in LAYOUTS else ()}
    fields.update(changes)
    return ExtensionSpec(**fields)


def test_spec_round_trips_through_json():
    spec = _spec(version="abc", trained={"pairs": 3})
    assert ExtensionSpec.from_json(spec.to_json()) == spec
    assert spec.matches("scan_01.radar.npy") and not spec.matches("scan_01.depth.npy")


@pytest.mark.parametrize(("changes", "message"), [
    ({"layout": "cube", "patterns": ()}, "layout 'cube'"),
    ({"geometry": Geometry(channels=3, samples=60, window=8)}, "multiple of window"),
    ({"layout": "map", "patterns": (), "geometry": Geometry(height=30, width=32, patch=8)},
     "multiples of patch"),
    ({"geometry": Geometry(channels=0)}, "positive integers"),
    ({"trunk": TrunkSpec(30, 1, 4)}, "multiple of heads"),
    ({"temperature": 0.0}, "temperature"),
    ({"patterns": (".npy",)}, "name part"),
    ({"patterns": (".radar.wav",)}, "must end in"),
    ({"name": "thermal"}, "built-in name"),
    ({"name": "my radar"}, "lower-case letters"),
])
def test_invalid_specs_are_refused(changes, message):
    with pytest.raises(ExtensionError, match=message):
        _spec(**changes)


def test_a_spec_of_another_format_or_with_unknown_fields_is_refused():
    raw = json.loads(_spec().to_json())
    with pytest.raises(ExtensionError, match="not a mediabind.extension/1"):
        ExtensionSpec.from_dict({**raw, "format": "other/2"})
    with pytest.raises(ExtensionError, match="unexpected keyword"):
        ExtensionSpec.from_dict({**raw, "code": "import os"})
    with pytest.raises(ExtensionError, match="not JSON"):
        ExtensionSpec.from_json("{")


# --- readers -------------------------------------------------------------------------------

def test_series_files_read_alike_in_every_format(tmp_path):
    spec = _spec()
    rng = np.random.default_rng(0)
    series = rng.standard_normal((100, 3)).astype(np.float32)  # [T, C]
    np.save(tmp_path / "a.radar.npy", series)
    np.save(tmp_path / "b.radar.npy", series.T.copy())  # [C, T]
    frame = pd.DataFrame(series, columns=["x", "y", "z"]).assign(t=np.arange(100) / 50)
    frame.to_csv(tmp_path / "c.radar.csv", index=False)
    frame.to_parquet(tmp_path / "d.radar.parquet")
    views = [read_views(tmp_path / n, spec) for n in
             ("a.radar.npy", "b.radar.npy", "c.radar.csv", "d.radar.parquet")]
    for other in views[1:]:
        assert len(other) == 2  # 100 samples → windows of 64, the last zero-padded
        for mine, theirs in zip(views[0], other, strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-6)
    assert views[0][0].shape == (3, 64) and views[0][0].dtype == np.float32
    np.testing.assert_array_equal(views[0][1][:, 36:], 0)
    np.testing.assert_allclose(views[0][1][:, :36], series[64:].T, atol=1e-6)


def test_maps_are_resized_to_the_geometry(tmp_path):
    spec = _spec("map")
    plane = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    Image.fromarray(plane).save(tmp_path / "a.radar.png")
    np.save(tmp_path / "b.radar.npy", plane.astype(np.float32)[None])
    (a,), (b,) = read_views(tmp_path / "a.radar.png", spec), read_views(tmp_path / "b.radar.npy", spec)
    assert a.shape == b.shape == (32, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize(("layout", "array", "message"), [
    ("series", np.full((50, 3), np.nan), "no finite value"),
    ("series", np.full((50, 3), 7.0), "constant"),
    ("series", np.ones((50, 4)), "expects 3 channels"),
    ("map", np.full((16, 16), np.inf), "no finite value"),
    ("map", np.zeros((16, 16)), "constant"),
    ("map", np.ones((2, 16, 16)), "expected \\[H,W\\]"),
])
def test_samples_with_nothing_to_embed_or_the_wrong_shape_are_refused(tmp_path, layout, array,
                                                                      message):
    path = tmp_path / "bad.radar.npy"
    np.save(path, array)
    with pytest.raises(DecodeError, match=message):
        read_views(path, _spec(layout))


def test_pickled_npy_is_never_loaded(tmp_path):
    path = tmp_path / "evil.radar.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="pickle"):
        read_views(path, _spec())


# --- encoder, loss, recall, split --------------------------------------------------------------

@pytest.mark.parametrize("layout", ["series", "map"])
def test_encoder_gives_unit_vectors_and_checks_its_input(layout):
    spec = _spec(layout)
    model = init_weights_(ExtensionEncoder(spec), seed=0).eval()
    x = torch.randn(5, *spec.geometry.shape(layout))
    vectors = model.embed(x)
    assert vectors.shape == (5, 1024)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(model(x).norm(dim=1), torch.full((5,), 1 / spec.temperature), atol=1e-3)
    with pytest.raises(ExtensionError, match="takes"):
        model.embed(torch.randn(5, 2, 2))


def test_info_nce_is_lowest_for_the_true_pairing():
    targets = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    aligned = info_nce(targets, targets, 0.1)
    shuffled = info_nce(targets[torch.randperm(16)], targets, 0.1)
    assert aligned < shuffled


def test_recall_counts_ranks_and_chance():
    keys = np.eye(4, dtype=np.float32)
    queries = keys[[0, 1, 3, 2]]  # the last two queries point at each other's key
    result = recall_at(queries, keys, np.arange(4), "q -> k", ks=(1, 2))
    assert result.recall[1] == 0.5 and result.chance == {1: 0.25, 2: 0.5}


def test_split_is_stable_when_pairs_are_added(tmp_path):
    pairs = [Pair(tmp_path / f"{i}.radar.npy", tmp_path / f"{i}.png") for i in range(200)]
    train, held = split(pairs, 0.25)
    more = pairs + [Pair(tmp_path / f"x{i}.radar.npy", tmp_path / f"x{i}.png") for i in range(50)]
    train2, held2 = split(more, 0.25)
    assert set(held) == {r for r in held2 if r < 200} and set(train) == {r for r in train2 if r < 200}
    assert 30 < len(held) < 70
    with pytest.raises(ExtensionError, match="empty"):
        split(pairs[:1], 0.25)


def test_a_shipment_recreates_the_registry_on_another_home(tmp_path):
    from embed_workers.bind.artifact import write_extension
    from schemas.extension import Shipment, active_specs, registered

    model = init_weights_(ExtensionEncoder(_spec()), seed=0)
    spec = write_extension(model, tmp_path / "driver")
    shipped = Shipment.of(tmp_path / "driver")
    shipped.unpack(tmp_path / "node")
    shipped.unpack(tmp_path / "node")  # a second task on the node: nothing changes
    assert registered(tmp_path / "node") == {"radar": spec} == active_specs(tmp_path / "node")
    folder = version_dir(tmp_path / "node", "radar", spec.version)
    original = version_dir(tmp_path / "driver", "radar", spec.version)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == \
        {p.name: p.read_bytes() for p in original.iterdir()}
    assert Shipment.of(tmp_path / "empty") == Shipment()


def test_unpacking_never_moves_a_nodes_own_active_version(tmp_path):
    """On one machine the node's HOME is the driver's: a run must not undo a retrain."""
    from embed_workers.bind.artifact import write_extension
    from schemas.extension import Shipment, active_specs, active_version

    first = write_extension(init_weights_(ExtensionEncoder(_spec()), seed=0), tmp_path / "driver")
    shipped = Shipment.of(tmp_path / "driver")
    second = write_extension(init_weights_(ExtensionEncoder(_spec()), seed=1), tmp_path / "node")
    shipped.unpack(tmp_path / "node")
    assert active_version(tmp_path / "node", "radar") == second.version  # untouched
    assert version_dir(tmp_path / "node", "radar", first.version).is_dir()  # shipped beside it
    assert active_specs(tmp_path / "node") == {"radar": first}  # this process: the run's version


def test_a_broken_extension_is_left_out_and_never_stops_the_others(tmp_path):
    from embed_workers.bind.artifact import write_extension
    from schemas.extension import registered

    good = write_extension(init_weights_(ExtensionEncoder(_spec()), seed=0), tmp_path)
    broken = write_extension(init_weights_(ExtensionEncoder(_spec(name="sonar")), seed=0), tmp_path)
    (version_dir(tmp_path, "sonar", broken.version) / "spec.json").write_text("{")
    assert registered(tmp_path) == {"radar": good}
