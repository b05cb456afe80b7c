"""Fixtures for the fault and load tests: a small corpus, a counting encoder, one Ray, figures.

The corpus is images and short texts only (one segment each, so every item is
exactly one point, segment and file at once): the faults are
about the pipeline and the store, not about decoding, and a small corpus keeps
the whole suite inside its time budget on two cores.

Exactly-once is counted in the store itself (``tally_points``): every point
is scrolled back as a list (a dict keyed by point id cannot see a duplicate)
and its (item, modality, segment) key is compared with the keys a clean
reference run of the same kinds of file stored (``clean_layout``).

Figures (points lost, work redone, seconds) are printed at the end of the
session and, when ``MEDIABIND_RELIABILITY_OUT`` names a file, written there
as JSON; benchmarks/reliability_report.py renders docs/reliability.md from it.
Every value is what the test observed; each figure also says whether its test
passed, recorded after the test ran.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pipeline_helpers import PRESET, open_ready_store, settings_for, sha256

from embed_workers.encoder import Encoder
from embed_workers.pipeline import run_ingest
from schemas import FILE_LEVEL_INDEX
from search.store import VectorStore

POINTS_PER_ITEM = 1  # an image or a short text is one segment: one point, marked whole
Key = tuple[str, str, int]  # (item_id, modality, segment_index): one point of one item


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


def point_key(payload: dict[str, Any]) -> Key:
    return payload["item_id"], payload["modality"], payload["segment_index"]


def stored_keys(store: Any) -> Counter[Key]:
    """How many points the store holds under each key (scrolled as a list, not a dict)."""
    return Counter(point_key(p.payload) for p in store.scroll(None, limit=1_000_000))


def stored_items(store: Any) -> int:
    """Distinct items with at least one point in the store."""
    return len({item for item, _, _ in stored_keys(store)})


@dataclass(frozen=True)
class Layout:
    """The (modality, segment) keys a clean run stores for one file, by file suffix.

    Every file of ``make_corpus`` of one suffix has the same shape (a 32x32
    image, a one-line note), so one clean item per suffix says what every
    item of a corpus should give, whatever its size.
    """

    shapes: dict[str, frozenset[tuple[str, int]]]

    def expected(self, *folders: Path) -> set[Key]:
        files = [p for f in folders for p in f.rglob("*") if p.is_file()]
        unknown = {p.suffix for p in files} - set(self.shapes)
        assert not unknown, f"no clean reference for {unknown}"
        return {(sha256(p), modality, segment) for p in files
                for modality, segment in self.shapes[p.suffix]}


@dataclass(frozen=True)
class PointTally:
    """The store's points against what the source should give, counted in the store."""

    expected: int  # points a clean run of these folders stores
    present: int  # expected keys the store holds at least once
    duplicated: int  # extra copies: a key stored n times counts n - 1
    stray: int  # points under keys the source does not give
    scrolled: int  # points read back one by one
    stored: int  # the store's own count
    expected_segments: int  # expected points that are encoded segments (not file-level)

    @property
    def lost(self) -> int:
        return self.expected - self.present

    def figures(self, prefix: str = "points") -> dict[str, int]:
        return {f"{prefix}_expected": self.expected, f"{prefix}_stored": self.stored,
                f"{prefix}_lost": self.lost, f"{prefix}_duplicated": self.duplicated,
                f"{prefix}_stray": self.stray}

    def check(self) -> None:
        """Every expected point stored once, nothing else: the exactly-once assertion."""
        assert self.duplicated == 0, f"{self.duplicated} points stored twice"
        assert self.lost == 0, f"{self.lost} of {self.expected} points lost"
        assert self.stray == 0, f"{self.stray} points the source does not give"
        assert self.stored == self.scrolled == self.expected


def tally_points(store: Any, layout: Layout, *folders: Path) -> PointTally:
    keys = stored_keys(store)
    expected = layout.expected(*folders)
    return PointTally(
        expected=len(expected), present=len(expected & keys.keys()),
        duplicated=sum(n - 1 for n in keys.values()),
        stray=sum(n for key, n in keys.items() if key not in expected),
        scrolled=sum(keys.values()), stored=store.count(),
        expected_segments=sum(1 for _, _, s in expected if s != FILE_LEVEL_INDEX))


def assert_exactly_once(store: VectorStore, layout: Layout, *folders: Path) -> PointTally:
    """Every item of ``folders`` is stored completely, each point once; returns the tally."""
    tally = tally_points(store, layout, *folders)
    tally.check()
    return tally


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
    settings = settings_for(tmp_path_factory.mktemp("enc"))
    return CountingEncoder(preset=PRESET, device="cpu", dtype="float32", settings=settings)


@pytest.fixture
def encoder(shared_encoder: CountingEncoder) -> CountingEncoder:
    shared_encoder.encoded = 0
    return shared_encoder


@pytest.fixture(scope="session")
def clean_layout(shared_encoder: CountingEncoder,
                 tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A clean run of one image and one note, read back from the store: what each gives."""
    folder = make_corpus(tmp_path_factory.mktemp("clean") / "media", images=1, texts=1, seed=99)
    settings = settings_for(tmp_path_factory.mktemp("clean_home"))
    encoded = shared_encoder.encoded  # the reference is not work a fault test redid
    with open_ready_store(settings) as store:
        report = run_ingest(str(folder), store, settings=settings, encoder=shared_encoder,
                            executor="local")
        keys = stored_keys(store)
    shared_encoder.encoded = encoded
    assert report.error is None and not report.rejected, report.error
    suffix = {sha256(p): p.suffix for p in folder.iterdir()}
    shapes: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for (item, modality, segment), n in keys.items():
        assert n == 1, "the clean reference stored a point twice"
        shapes[suffix[item]].add((modality, segment))
    assert set(shapes) == {".png", ".txt"}
    for shape in shapes.values():  # the corpus's promise: one segment, stored as one point
        assert len(shape) == POINTS_PER_ITEM
        assert not any(s == FILE_LEVEL_INDEX for _, s in shape)
    return Layout({k: frozenset(v) for k, v in shapes.items()})


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


# --- figures ---------------------------------------------------------------------------------

CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep the call phase's outcome on the item: ``figures`` reads it at teardown."""
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _session_facts() -> dict[str, Any]:
    """Where the figures were measured: the renderer says so in the doc."""
    return {"cpus": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(),
            "finished": datetime.now(UTC).strftime("%Y-%m-%d")}


@pytest.fixture(scope="session")
def figure_table() -> Iterator[dict[str, dict[str, Any]]]:
    """All figures of the session: printed, and saved as JSON, at the end."""
    table: dict[str, dict[str, Any]] = {}
    yield table
    for name, values in table.items():
        print(f"FIGURE {name}: {json.dumps(values)}")
    out = os.environ.get("MEDIABIND_RELIABILITY_OUT")
    if out and table:
        path = Path(out)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged |= table | {"_session": _session_facts()}
        path.write_text(json.dumps(merged, indent=1, sort_keys=True))


@pytest.fixture
def figures(figure_table: dict[str, dict[str, Any]],
            request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """``figures(name, case=None, **values)`` records what one test observed.

    A parametrized test passes ``case`` so its cases sit side by side under one
    name. Each entry gets ``test_passed`` after the test: a figure recorded
    before an assertion that then failed still reaches the JSON, marked failed.
    """
    entries: list[dict[str, Any]] = []

    def record(name: str, case: object = None, **values: Any) -> None:
        entry = {k: _rounded(v) for k, v in values.items()}
        if case is None:
            figure_table[name] = entry
        else:
            figure_table.setdefault(name, {}).setdefault("cases", {})[str(case)] = entry
        entries.append(entry)

    yield record
    passed = request.node.stash.get(CALL_PASSED, False)
    for entry in entries:
        entry["test_passed"] = passed
