"""`mediabind bind --executor ray`: the same training loop on a Ray Train group of two workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray
from bind_data import CHANNELS, SIDE, write_pairs

from embed_workers.bind import BindRequest, bind
from embed_workers.bind.pairs import Pair, split
from embed_workers.bind.train import TrainOptions, read_checkpoint
from schemas import Settings
from schemas.extension import Geometry, TrunkSpec, registered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:  # 2 workers x 1 CPU plus the train controller: more logical CPUs than cores
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _uneven_pair_count() -> tuple[int, int]:
    """A pair count whose training rows are odd, with the global batch chosen so that
    dealing rows to two ranks unevenly would give rank 0 one step more than rank 1 (a
    DistributedDataParallel step the other rank never joins: a hang)."""
    for count in range(150, 400):
        pairs = [Pair(Path(f"{i:05d}.radar.npy"), Path(f"{i:05d}.png")) for i in range(count)]
        rows = len(split(pairs, 0.25)[0])
        larger = (rows + 1) // 2
        if rows % 2 and larger % 2 == 0:
            return count, larger  # per rank: larger/2 rows per step; 2 steps vs 1
    raise AssertionError("no such pair count")


def test_ray_train_runs_the_loop_data_parallel_and_registers(tmp_path, local_ray):
    count, batch = _uneven_pair_count()
    manifest = write_pairs(tmp_path / "data", count)
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    request = BindRequest("radar", manifest, layout="series",
                          geometry=Geometry(channels=CHANNELS, samples=SIDE, window=8),
                          trunk=TrunkSpec(32, 1, 2), holdout=0.25,
                          options=TrainOptions(epochs=2, batch_size=batch), executor="ray",
                          workers=2, run_dir=tmp_path / "run")
    result = bind(request, settings)  # returns: both ranks ran the same number of steps
    state = read_checkpoint(tmp_path / "run")
    assert state["history"]["workers"] == 2  # fit ran as a group of two
    assert len(state["history"]["train_loss"]) == 2
    assert registered(settings.home) == {"radar": result.spec}
    assert result.report.held_out == result.spec.trained["held_out_pairs"] > 0


def test_a_ray_ingest_embeds_extension_files_with_the_shipped_version(tmp_path, local_ray):
    from embed_workers.executors import preset_model_id
    from embed_workers.pipeline import run_ingest
    from search.store import open_store

    manifest = write_pairs(tmp_path / "data", 120)
    settings = Settings(home=tmp_path / "home", preset="imagebind_tiny")
    spec = bind(BindRequest("radar", manifest, layout="series",
                            geometry=Geometry(channels=CHANNELS, samples=SIDE, window=8),
                            trunk=TrunkSpec(32, 1, 2), holdout=0.25,
                            options=TrainOptions(epochs=1, batch_size=32)), settings).spec
    folder = tmp_path / "archive"
    folder.mkdir()
    for sample in sorted((tmp_path / "data" / "samples").iterdir())[:12]:
        (folder / sample.name).write_bytes(sample.read_bytes())
    with open_store(settings) as store:
        store.ensure_collection(preset_model_id("imagebind_tiny"), settings.policy)
        report = run_ingest(str(folder), store, settings=settings, executor="ray")
        points = store.scroll({"modality": "radar"}, 1000)
    assert not report.rejected, report.rejected[:2]
    assert report.items_ingested["radar"] == 12
    assert {p.payload["extension_version"] for p in points} == {spec.version}
    assert report.encode_nodes  # encoded by the Ray actors
