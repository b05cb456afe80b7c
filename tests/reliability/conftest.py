"""Fixtures for the fault and load tests: a small corpus, a counting encoder, one Ray, figures.

The corpus is images and short texts only (one segment each, so every item is
exactly two points: its segment and its file-level point): the faults are
about the pipeline and the store, not about decoding, and a small corpus keeps
the whole suite inside its time budget on two cores.

Figures (work redone, seconds) are printed at the end of the session and,
when ``MEDIABIND_RELIABILITY_OUT`` names a file, written there as JSON; that
is where the numbers in docs/reliability.md come from.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pipeline_helpers import PRESET, all_points, sha256

from embed_workers.encoder import Encoder
from schemas import FILE_LEVEL_INDEX
from search.store import VectorStore

POINTS_PER_ITEM = 2  # one segment + one file-level point (images and short texts)


def make_corpus(folder: Path, images: int, texts: int, seed: int = 0) -> Path:
    """``images`` noise PNGs and ``texts`` one-line notes, all with distinct bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(images):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{seed}_{i:03d}.png")
    for i in range(texts):
        (folder / f"note{seed}_{i:03d}.txt").write_text(f"note {seed}.{i}: waves on a beach")
    return folder


def item_ids(folder: Path) -> set[str]:
    return {sha256(p) for p in folder.rglob("*") if p.is_file()}


def assert_exactly_once(store: VectorStore, *folders: Path) -> int:
    """Every item of ``folders`` is stored completely, each point once; returns the count."""
    points = all_points(store)
    keys = Counter((p["item_id"], p["modality"], p["segment_index"]) for p in points.values())
    assert not [k for k, n in keys.items() if n > 1], "a point is stored twice"
    wanted = set().union(*(item_ids(f) for f in folders))
    file_level = {p["item_id"] for p in points.values()
                  if p["segment_index"] == FILE_LEVEL_INDEX}
    segments = {p["item_id"] for p in points.values() if p["segment_index"] != FILE_LEVEL_INDEX}
    assert file_level == wanted and segments == wanted
    assert store.count() == len(points) == POINTS_PER_ITEM * len(wanted)
    return len(points)


class CountingEncoder(Encoder):
    """The real tiny encoder, counting the segments it encodes (the work a fault redoes)."""

    encoded = 0

    def encode_prepared(self, inputs):  # type: ignore[no-untyped-def]
        vectors = super().encode_prepared(inputs)
        self.encoded += len(inputs)
        return vectors


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "media", images=16, texts=4)


@pytest.fixture(scope="session")
def shared_encoder(tmp_path_factory: pytest.TempPathFactory) -> CountingEncoder:
    from pipeline_helpers import settings_for

    settings = settings_for(tmp_path_factory.mktemp("enc"))
    return CountingEncoder(preset=PRESET, device="cpu", dtype="float32", settings=settings)


@pytest.fixture
def encoder(shared_encoder: CountingEncoder) -> CountingEncoder:
    shared_encoder.encoded = 0
    return shared_encoder


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One Ray for the session, with more CPUs than the pool asks for (no 2-core deadlock)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def figures() -> Iterator[Callable[..., None]]:
    """``figures(name, **values)`` records one fault's cost; printed and saved at the end."""
    table: dict[str, dict[str, Any]] = {}

    def record(name: str, **values: Any) -> None:
        table[name] = {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}

    yield record
    for name, values in table.items():
        print(f"FIGURE {name}: {json.dumps(values)}")
    out = os.environ.get("MEDIABIND_RELIABILITY_OUT")
    if out and table:
        path = Path(out)
        merged = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(merged | table, indent=1, sort_keys=True))
