"""Search under load: p50/p99 latency and errors at 1, 8 and 32 concurrent clients.

    .venv/bin/python benchmarks/load.py [--points 10000] [--queries 400] [--json OUT]

Builds a store of ``--points`` random unit vectors (1024-d) in a temporary
folder and runs the same number of queries at each concurrency level, every
client a thread. Modes:

- ``edge``: the embedded store as every caller gets it — one handle per
  process, shared by all threads; the store serialises its engine calls itself
  (``search.backends.serial``);
- ``server``: when ``QDRANT_URL`` is set, one qdrant-client handle shared by
  the threads (a server takes concurrent requests).

Then search latency while a writer upserts batches of 256 points into the
same store (the worst case of a run: the writer never waits on a model),
against idle, with no lock of the caller's own. Ratios are against the 1-client p50 of the same mode, measured
in the same run, so they hold across machines better than the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_record as record  # noqa: E402

from schemas import EmbeddingRecord, SegmentPolicy, Settings, point_id  # noqa: E402
from search.store import VectorStore, open_store  # noqa: E402

DIM = 1024
POLICY = SegmentPolicy()
MODEL = "load-bench"
CLIENTS = (1, 8, 32)
WRITE_BATCH = 256


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(vectors: np.ndarray, first: int) -> list[EmbeddingRecord]:
    out = []
    for i, v in enumerate(vectors, start=first):
        item = f"item{i:07d}"
        payload = {"item_id": item, "source_uri": [f"/bench/{item}"], "archive": "/bench",
                   "member": item, "kind": "image", "modality": "vision", "segment_index": 0,
                   "start_s": None, "end_s": None, "model_id": MODEL, "policy": POLICY.policy_id,
                   "ingested_at": "2026-01-01T00:00:00+00:00", "run_id": "bench", "meta": {}}
        out.append(EmbeddingRecord(point_id(item, "vision", 0, POLICY, MODEL), v, payload))
    return out


def build_store(settings: Settings, vectors: np.ndarray) -> VectorStore:
    store = open_store(settings)
    store.ensure_collection(MODEL, POLICY)
    for start in range(0, len(vectors), 2048):
        store.write(records(vectors[start:start + 2048], start))
    return store


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def run_clients(search: Callable[[np.ndarray], Any], queries: np.ndarray,
                clients: int) -> dict[str, Any]:
    """``clients`` threads split ``queries``; latency per query as each client saw it."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(share: np.ndarray) -> None:
        barrier.wait()
        for q in share:
            started = time.perf_counter()
            try:
                search(q)
            except Exception as exc:  # counted: the figure is the error count
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, np.array_split(queries, clients)))
    wall = time.perf_counter() - started
    stats = percentiles(latencies) if latencies else {"p50_ms": float("nan"),
                                                      "p99_ms": float("nan")}
    return {"clients": clients, **stats, "qps": len(latencies) / wall, "errors": len(errors),
            "first_error": errors[0] if errors else None}


def concurrency_table(store: VectorStore, queries: np.ndarray) -> list[dict]:
    def search(q: np.ndarray) -> Any:
        return store.search(q, limit=10)

    rows = [run_clients(search, queries, c) for c in CLIENTS]
    for row in rows:
        row["p50_vs_1_client"] = row["p50_ms"] / rows[0]["p50_ms"]
    return rows


def search_while_writing(store: VectorStore, queries: np.ndarray, rng: np.random.Generator,
                         first_id: int) -> dict[str, Any]:
    """One searching thread, idle and then beside a writer, on one shared handle."""

    def search(q: np.ndarray) -> Any:
        return store.search(q, limit=10)

    idle = run_clients(search, queries, 1)
    stop, written = threading.Event(), [0]

    def writer() -> None:
        next_id = first_id
        while not stop.is_set():
            batch = records(unit_vectors(rng, WRITE_BATCH), next_id)
            store.write(batch)
            next_id += WRITE_BATCH
            written[0] += WRITE_BATCH

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    busy = run_clients(search, queries, 1)
    stop.set()
    thread.join()
    return {"idle_p50_ms": idle["p50_ms"], "ingesting_p50_ms": busy["p50_ms"],
            "ingesting_p99_ms": busy["p99_ms"], "ratio_p50": busy["p50_ms"] / idle["p50_ms"],
            "errors": idle["errors"] + busy["errors"], "points_written_meanwhile": written[0]}


def edge_figures(points: int, queries: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), store="edge", optimize_after_points=0)
        started = time.perf_counter()
        store = build_store(settings, unit_vectors(rng, points))
        build_s = time.perf_counter() - started
        try:
            out = {"build_s": build_s,
                   "edge": concurrency_table(store, queries),
                   "search_while_ingesting": search_while_writing(store, queries, rng, points)}
            out["points_after"] = store.count()
            return out
        finally:
            store.close()


def server_figures(points: int, queries: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    settings = Settings(store="server", collection=f"load_bench_{uuid.uuid4().hex[:8]}")
    store = build_store(settings, unit_vectors(rng, points))
    try:
        return {"server": concurrency_table(store, queries, locked=False)}
    finally:
        store.close()


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n{name}: clients | p50 ms | p99 ms | p50 vs 1 client | qps | errors")
    for r in rows:
        print(f"  {r['clients']:>3} | {r['p50_ms']:7.2f} | {r['p99_ms']:7.2f} | "
              f"{r['p50_vs_1_client']:5.2f}x | {r['qps']:7.1f} | {r['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=384)
    parser.add_argument("--json", help="also write the figures here")
    record.add_flag(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    queries = unit_vectors(rng, args.queries)
    figures = {"points": args.points, "queries_per_level": args.queries,
               "cpus": os.cpu_count(), "edge": edge_figures(args.points, queries, rng)}
    if os.environ.get("QDRANT_URL"):
        figures["server"] = server_figures(args.points, queries, rng)
    print_table("edge", figures["edge"]["edge"])
    if "server" in figures:
        print_table("server", figures["server"]["server"])
    mixed = figures["edge"]["search_while_ingesting"]
    print(f"\nsearch while ingesting: p50 {mixed['ingesting_p50_ms']:.2f} ms vs idle "
          f"{mixed['idle_p50_ms']:.2f} ms ({mixed['ratio_p50']:.2f}x), errors {mixed['errors']}, "
          f"{mixed['points_written_meanwhile']} points written meanwhile")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    if args.record:
        rows = figures["edge"]["edge"]
        record.save("load", f"concurrent searches, {args.points:,} points, embedded store",
                    f"{sum(r['errors'] for r in rows)} errors at "
                    f"{'/'.join(str(r['clients']) for r in rows)} threads; p50 "
                    f"{rows[0]['p50_ms']:.0f} ms alone, {rows[-1]['p50_vs_1_client']:.0f}x at "
                    f"{rows[-1]['clients']} threads ({rows[0]['qps']:.0f} q/s alone, "
                    f"{rows[-1]['qps']:.0f} at {rows[-1]['clients']}); while ingesting p50 "
                    f"{mixed['ratio_p50']:.2f}x idle", figures)


if __name__ == "__main__":
    main()
