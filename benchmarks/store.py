"""Store benchmark: our VectorStore against the bare engine calls, same data, same run.

For each embedded backend (edge, local) and size, it upserts random but clustered
unit vectors (1024-d) with a payload like ours, then times searches (plain and
filtered on modality). The figures that matter are the ratios ours/bare: our
overhead (validation, batching, filter translation, result conversion).

    .venv/bin/python benchmarks/store.py                 # 10k and 50k points
    .venv/bin/python benchmarks/store.py --sizes 10000 50000 100000
    .venv/bin/python benchmarks/store.py --quick         # ~1k points, smoke run
    .venv/bin/python benchmarks/store.py --json out.json --dir /dev/shm

qdrant-client's embedded mode commits SQLite once per point, so on a busy disk its
upsert figures measure the disk; ``--dir /dev/shm`` measures the code instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_record as record
import numpy as np

from schemas import EmbeddingRecord, SegmentPolicy, Settings, collection_name, point_id
from schemas.payload import INDEXED_FIELDS
from search.store import open_store

DIM = 1024
MODEL = "bench-model"
POLICY = SegmentPolicy()
BATCH = 256
CLUSTERS = 64
QUERIES = 40
WARMUP = 3


@dataclass
class Row:
    backend: str
    points: int
    side: str  # "ours" or "bare"
    upsert_pps: float
    search_p50_ms: float
    search_p95_ms: float
    filtered_p50_ms: float


# --- data ----------------------------------------------------------------------------


def clustered_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, CLUSTERS, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(
        np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def payload(k: int) -> dict[str, Any]:
    item, index = f"{k // 12:08x}", k % 12 - 1  # 12 points per item, the first file-level
    modality = "vision" if k % 2 else "audio"
    return {"item_id": item, "source_uri": [f"/data/a/{item}.mp4"], "archive": "/data/a",
            "member": f"{item}.mp4", "kind": "video", "modality": modality,
            "segment_index": index, "start_s": max(index, 0) * 2.0,
            "end_s": max(index, 0) * 2.0 + 2.0, "duration_s": 22.0, "mime": "video/mp4",
            "size_bytes": 1 << 20, "model_id": MODEL, "policy": POLICY.policy_id,
            "ingested_at": "2026-01-10T00:00:00+00:00", "run_id": "bench", "meta": {"cam": "A"}}


def make_records(vectors: np.ndarray) -> list[EmbeddingRecord]:
    out = []
    for k, vector in enumerate(vectors):
        p = payload(k)
        out.append(EmbeddingRecord(point_id(p["item_id"], p["modality"], p["segment_index"] + k,
                                            POLICY, MODEL), vector, p))
    return out


# --- timing --------------------------------------------------------------------------
# Both sides are open at once and take turns, batch by batch and query by query, so a
# busy shared machine slows both alike and the ratio stays meaningful.


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_upserts(sides: dict[str, tuple], records: list[EmbeddingRecord]) -> dict[str, float]:
    spent = dict.fromkeys(sides, 0.0)
    order = list(sides)
    for k, start in enumerate(range(0, len(records), BATCH)):
        chunk = records[start:start + BATCH]
        for side in order if k % 2 else order[::-1]:  # alternate who goes first
            spent[side] += timed(lambda u=sides[side][0], c=chunk: u(c))
    return {side: len(records) / seconds for side, seconds in spent.items()}


def time_queries(sides: dict[str, tuple], which: int, queries: np.ndarray) -> dict[str, list]:
    times: dict[str, list[float]] = {side: [] for side in sides}
    order = list(sides)
    for k, q in enumerate(queries):
        for side in order if k % 2 else order[::-1]:  # alternate who goes first
            ms = timed(lambda s=sides[side][which], v=q: s(v)) * 1000
            if k >= WARMUP:
                times[side].append(ms)
    return times


def measure(backend: str, records: list[EmbeddingRecord], queries: np.ndarray,
            folder: Path) -> list[Row]:
    sides = {side: SIDES[side][backend](records, folder) for side in SIDES}
    try:
        pps = time_upserts(sides, records)
        plain, filtered = time_queries(sides, 1, queries), time_queries(sides, 2, queries)
    finally:
        for *_rest, close in sides.values():
            close()
    return [Row(backend, len(records), side, pps[side], statistics.median(plain[side]),
                float(np.percentile(plain[side], 95)), statistics.median(filtered[side]))
            for side in sides]


# --- our store -----------------------------------------------------------------------


def ours(backend: str) -> Callable[[list[EmbeddingRecord], Path], tuple]:
    def build(records: list[EmbeddingRecord], folder: Path) -> tuple:
        settings = Settings(home=folder, store=backend, upsert_batch=BATCH,
                            optimize_after_points=0)
        store = open_store(settings)
        store.ensure_collection(MODEL, POLICY)
        return (store.write,
                lambda q: store.search(q, limit=10),
                lambda q: store.search(q, where={"modality": "audio"}, limit=10),
                store.close)
    return build


# --- bare engines --------------------------------------------------------------------


def bare_edge(records: list[EmbeddingRecord], folder: Path) -> tuple:
    import qdrant_edge as qe

    from search.backends.edge import INDEX_PARAMS as EDGE_INDEX_PARAMS
    from search.backends.edge import INDEX_TYPES as EDGE_INDEX_TYPES

    shard = qe.EdgeShard.create(str(folder / "bare-edge"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)))
    for field, kind in INDEXED_FIELDS.items():  # the same payload indexes as our store
        schema = EDGE_INDEX_PARAMS.get(field, EDGE_INDEX_TYPES[kind])
        shard.update(qe.UpdateOperation.create_field_index(field, schema))
    audio = qe.Filter(must=[qe.FieldCondition("modality", match=qe.MatchValue("audio"))])

    def upsert(chunk: list[EmbeddingRecord]) -> None:
        points = [qe.Point(r.point_id, r.vector.tolist(), r.payload) for r in chunk]
        shard.update(qe.UpdateOperation.upsert_points(points))

    def search(q: np.ndarray, filt: Any = None) -> Any:
        return shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(q.tolist()),
                                           filter=filt, with_payload=True))

    return upsert, search, lambda q: search(q, audio), shard.close


def bare_local(records: list[EmbeddingRecord], folder: Path) -> tuple:
    from qdrant_client import QdrantClient, models

    from search.backends.local import INDEX_PARAMS as CLIENT_INDEX_PARAMS
    from search.backends.local import INDEX_TYPES as CLIENT_INDEX_TYPES

    client = QdrantClient(path=str(folder / "bare-local"))
    name = collection_name(MODEL, POLICY)
    client.create_collection(name, vectors_config=models.VectorParams(
        size=DIM, distance=models.Distance.COSINE))
    with warnings.catch_warnings():  # embedded mode: indexes are no-ops, and it says so
        warnings.simplefilter("ignore")
        for field, kind in INDEXED_FIELDS.items():
            schema = CLIENT_INDEX_PARAMS.get(field, CLIENT_INDEX_TYPES[kind])
            client.create_payload_index(name, field, field_schema=schema)
    audio = models.Filter(must=[models.FieldCondition(
        key="modality", match=models.MatchValue(value="audio"))])

    def upsert(chunk: list[EmbeddingRecord]) -> None:
        client.upsert(name, models.Batch(ids=[r.point_id for r in chunk],
                                         vectors=[r.vector.tolist() for r in chunk],
                                         payloads=[r.payload for r in chunk]))

    def search(q: np.ndarray, filt: Any = None) -> Any:
        return client.query_points(name, query=q.tolist(), query_filter=filt, limit=10,
                                   with_payload=True)

    return upsert, search, lambda q: search(q, audio), client.close


SIDES: dict[str, dict[str, Callable[[list[EmbeddingRecord], Path], tuple]]] = {
    "bare": {"edge": bare_edge, "local": bare_local},
    "ours": {"edge": ours("edge"), "local": ours("local")},
}


# --- report --------------------------------------------------------------------------


def run(sizes: Sequence[int], backends: Sequence[str], where: Path | None) -> list[Row]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        records = make_records(clustered_vectors(n, rng))
        queries = clustered_vectors(QUERIES + WARMUP, np.random.default_rng(n))
        for backend in backends:
            with tempfile.TemporaryDirectory(dir=where) as folder:
                rows.extend(measure(backend, records, queries, Path(folder)))
            print(f"  done {backend} {n}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    head = (f"{'backend':7} {'points':>7} | {'upsert pts/s ours/bare':>24} {'ratio':>6} | "
            f"{'search p50 ms ours/bare':>24} {'ratio':>6} | {'p95 ms ours/bare':>17} | "
            f"{'filtered p50 ms ours/bare':>26}")
    lines = [head, "-" * len(head)]
    pairs: dict[tuple[str, int], dict[str, Row]] = {}
    for row in rows:
        pairs.setdefault((row.backend, row.points), {})[row.side] = row
    for (backend, n), pair in pairs.items():
        o, b = pair["ours"], pair["bare"]
        lines.append(
            f"{backend:7} {n:>7} | {o.upsert_pps:>11.0f} /{b.upsert_pps:>11.0f} "
            f"{b.upsert_pps / o.upsert_pps:>6.2f} | {o.search_p50_ms:>11.2f} /"
            f"{b.search_p50_ms:>11.2f} {o.search_p50_ms / b.search_p50_ms:>6.2f} | "
            f"{o.search_p95_ms:>8.2f} /{b.search_p95_ms:>7.2f} | "
            f"{o.filtered_p50_ms:>12.2f} /{b.filtered_p50_ms:>12.2f}")
    lines.append("ratio = ours time / bare time (1.00 = no overhead; upsert as time per point)")
    return "\n".join(lines)


def keep(rows: list[Row]) -> None:
    """The README's figure (``--record``): the largest edge store, ours against bare."""
    n = max(r.points for r in rows if r.backend == "edge")
    o, b = (next(r for r in rows if (r.backend, r.points, r.side) == ("edge", n, side))
            for side in ("ours", "bare"))
    ratios = [b.upsert_pps / o.upsert_pps, o.search_p50_ms / b.search_p50_ms,
              o.filtered_p50_ms / b.filtered_p50_ms]
    record.save("store", f"embedded store (edge), {n:,} points",
                f"upsert {o.upsert_pps:,.0f} points/s, exact search p50 {o.search_p50_ms:.0f} ms, "
                f"filtered p50 {o.filtered_p50_ms:.0f} ms; our layer {min(ratios):.2f}-"
                f"{max(ratios):.2f}x the bare engine's time", {"rows": [asdict(r) for r in rows]})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--backends", nargs="+", default=["edge", "local"],
                        choices=["edge", "local"])
    parser.add_argument("--quick", action="store_true", help="~1k points, a smoke run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--dir", type=Path, help="where the stores are created (default: "
                        "the temp dir; /dev/shm takes a busy disk's fsyncs out of the figures)")
    record.add_flag(parser)
    args = parser.parse_args(argv)
    sizes = [1_000] if args.quick else args.sizes
    rows = run(sizes, args.backends, args.dir)
    print(table(rows))
    if args.record:
        keep(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
