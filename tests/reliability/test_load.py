"""Load on the embedded store: concurrent searches, and searches while a run writes.

The supported concurrency model (docs/reliability.md): an embedded store
belongs to one process, and within it one ``VectorStore`` handle is shared by
every thread behind one ``threading.Lock`` (``GuardedStore``), the writer
(``run_ingest``'s sink) included. Behaviour only: no errors, every result
right and counts bounded; no timing assertions (benchmarks/load.py measures).
The figures count failed queries, and points lost or doubled in the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import tally_points
from pipeline_helpers import open_ready_store, settings_for
from store_helpers import POLICY, random_unit, record

from embed_workers.pipeline import run_ingest
from schemas import EmbeddingRecord
from search.store import VectorStore, open_store

pytestmark = [pytest.mark.timeout(180)]
POINTS = 1500
QUERIES_PER_CLIENT = 12


class GuardedStore:
    """One store handle shared by threads: every call holds the same lock."""

    def __init__(self, store: VectorStore) -> None:
        self.store, self.lock = store, threading.Lock()

    def search(self, vector: np.ndarray, **kw: Any):
        with self.lock:
            return self.store.search(vector, **kw)

    def count(self) -> int:
        with self.lock:
            return self.store.count()

    # PointSink, so a run can write through the same guard
    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        with self.lock:
            self.store.write(records)

    def completed_items(self, item_ids):
        with self.lock:
            return self.store.completed_items(item_ids)

    def add_locations(self, item_id, uris) -> None:
        with self.lock:
            self.store.add_locations(item_id, uris)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[GuardedStore, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = np.stack([random_unit(rng) for _ in range(POINTS)])
    store = open_store(settings_for(tmp_path_factory.mktemp("load")))
    store.ensure_collection("m1", POLICY)
    store.write([record(f"item{i:05d}", 0, v) for i, v in enumerate(vectors)])
    yield GuardedStore(store), vectors
    store.close()


def _clients(n: int, work: Callable[[int], list[str]]) -> list[str]:
    """Run ``work(client)`` on ``n`` threads at once; the problems they report."""
    start = threading.Barrier(n)

    def client(i: int) -> list[str]:
        start.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [p for problems in pool.map(client, range(n)) for p in problems]


@pytest.mark.parametrize("clients", [1, 8, 32])
def test_concurrent_searches_on_one_guarded_handle(filled, clients, figures) -> None:
    store, vectors = filled

    def work(client: int) -> list[str]:
        problems = []
        rng = np.random.default_rng(client)
        for k in rng.integers(0, POINTS, QUERIES_PER_CLIENT):
            try:
                hits = store.search(vectors[k], limit=5)
            except Exception as exc:  # counted, not raised: every client must report
                problems.append(f"client {client}: {type(exc).__name__}: {exc}")
                continue
            if len(hits) != 5 or hits[0].payload["item_id"] != f"item{k:05d}":
                problems.append(f"client {client}: query {k} got {hits[:1]}")
        return problems

    problems = _clients(clients, work)
    count = store.count()
    figures("concurrent_searches", case=clients, clients=clients, points=POINTS,
            queries=clients * QUERIES_PER_CLIENT, failed_queries=len(problems),
            points_stored=count, points_lost=max(POINTS - count, 0),
            points_stray=max(count - POINTS, 0))
    assert problems == []
    assert count == POINTS


@pytest.mark.slow
def test_searches_while_a_run_writes_to_the_same_store(corpus, encoder, clean_layout, tmp_path,
                                                        figures) -> None:
    settings = settings_for(tmp_path / "home", upsert_batch=2)
    with open_ready_store(settings) as raw:
        store = GuardedStore(raw)
        probe = random_unit(np.random.default_rng(1))
        counts: list[int] = []
        problems: list[str] = []
        done = threading.Event()

        def search_loop() -> None:
            while not done.is_set():
                try:
                    counts.append(store.count())
                    store.search(probe, limit=3)
                except LookupError:
                    continue  # no collection behind the alias yet: not an error of load
                except Exception as exc:
                    problems.append(f"{type(exc).__name__}: {exc}")

        searcher = threading.Thread(target=search_loop, daemon=True)
        searcher.start()
        try:
            report = run_ingest(str(corpus), store, settings=settings, encoder=encoder)
        finally:
            done.set()
            searcher.join(30)
        final = store.count()
        tally = tally_points(raw, clean_layout, corpus)
    shrank = sum(1 for before, after in zip(counts, counts[1:], strict=False) if after < before)
    figures("search_while_ingesting", searches=len(counts), errors=len(problems),
            count_shrank=shrank, items=report.items_completed, **tally.figures())
    assert problems == [] and report.error is None
    assert counts and counts == sorted(counts), "a search saw the store shrink"
    assert max(counts) <= final == report.points_written
    tally.check()
