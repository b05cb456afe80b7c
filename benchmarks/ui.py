"""The search page's API under load, next to a bare ``MediaSearch.search`` in the same run.

    .venv/bin/python benchmarks/ui.py                     # 10k and 100k points
    .venv/bin/python benchmarks/ui.py --sizes 10000 --queries 100 --json out.json

For each size it fills an embedded (edge) store with clustered random unit vectors
under the tiny preset's model id, builds the HNSW index as a store's close would,
starts the real web server (uvicorn, a socket on 127.0.0.1) and runs, at 1, 8 and
32 concurrent clients (threads, one keep-alive HTTP connection each; the page's
clients in a process of their own, as a browser is):

- ``page text``: ``GET /api/search?text=...`` (the tiny text tower encodes it);
- ``bare text``: ``MediaSearch.search(text=...)`` on the server's own client;
- ``page vector``: ``GET /api/search?like=POINT`` (a stored, precomputed vector);
- ``bare vector``: ``MediaSearch.search(vector=...)`` with that vector.

Both sides ask for the same page (10 files, 3 moments each) and take turns, level
by level, so a busy machine slows both alike. It prints p50/p99 latency and
queries/s, the page's p50 over the bare call's, and the issue's goals: at 100k
points, page text p50 <= 20 ms and p99 <= 60 ms (one client), page vector <= 1.3x
bare vector.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import clustered_vectors, payload  # noqa: E402  (benchmarks/store.py)

from schemas import EmbeddingRecord, SegmentPolicy, Settings, point_id  # noqa: E402

PRESET = "imagebind_tiny"
CLIENTS = (1, 8, 32)
LIMIT, MOMENTS = 10, 3
WRITE_BATCH = 1024
PHRASES = ("a dog barking in the rain", "waves on a pebble beach", "a crackling fire",
           "city traffic at night", "birds singing at dawn", "a violin in a small hall")


def build(folder: Path, points: int) -> Settings:
    from embed_workers.executors import preset_model_id
    from search.store import open_store

    model = preset_model_id(PRESET)
    policy = SegmentPolicy()
    settings = Settings(home=folder, store="edge", preset=PRESET, device="cpu",
                        dtype="float32", optimize_after_points=0)
    vectors = clustered_vectors(points, np.random.default_rng(points))
    with open_store(settings) as store:
        store.ensure_collection(model, policy)
        for start in range(0, points, WRITE_BATCH):
            batch = []
            for k in range(start, min(start + WRITE_BATCH, points)):
                p = payload(k) | {"model_id": model, "policy": policy.policy_id}
                batch.append(EmbeddingRecord(point_id(p["item_id"], p["modality"],
                                                      p["segment_index"] + k, policy, model),
                                             vectors[k], p))
            store.write(batch)
        started = time.perf_counter()
        store.optimize()
        print(f"  {points} points written; HNSW built in {time.perf_counter() - started:.1f} s",
              flush=True)
    return settings


class Server:
    """The real app on a real socket, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from flows.commands.ui import bound_socket
        from web.app import create_app

        self.app = create_app(settings)
        self.sock = bound_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def client(self) -> Any:
        return self.app.state.service.client


def page_call(port: int) -> Callable[[dict[str, Any]], Callable[[], Any]]:
    """Per thread: one keep-alive connection; returns a call that GETs /api/search."""
    local = threading.local()

    def make(params: dict[str, Any]) -> Callable[[], Any]:
        query = urllib.parse.urlencode({**params, "limit": LIMIT, "moments": MOMENTS},
                                       doseq=True)

        def call() -> Any:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            local.conn.request("GET", f"/api/search?{query}")
            response = local.conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            return body
        return call
    return make


def run_level(calls: Sequence[Callable[[], Any]], clients: int) -> dict[str, float]:
    """Every call once, spread over ``clients`` threads; latency percentiles and q/s."""
    latencies: list[float] = []
    lock = threading.Lock()
    todo = iter(range(len(calls)))

    def worker() -> None:
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                return
            started = time.perf_counter()
            calls[k]()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"p50_ms": statistics.median(latencies),
            "p99_ms": float(np.percentile(latencies, 99)), "qps": len(calls) / wall}


def measure(settings: Settings, points: int, queries: int) -> list[dict[str, Any]]:
    rows = []
    with Server(settings) as server:
        client = server.client
        ids = [p.id for p in client.store.scroll(limit=queries)]
        vectors = [client.stored_vector(i) for i in ids]
        texts = [PHRASES[k % len(PHRASES)] for k in range(queries)]
        pages = {"page text": [{"text": t} for t in texts],
                 "page vector": [{"like": i} for i in ids]}
        bare: dict[str, list[Callable[[], Any]]] = {
            "bare text": [lambda t=t: client.search(text=t, limit=LIMIT, moments=MOMENTS)
                          for t in texts],
            "bare vector": [lambda v=v: client.search(vector=v, limit=LIMIT, moments=MOMENTS)
                            for v in vectors],
        }
        # The page's clients run in a process of their own, as a browser does: in this
        # one they would take the interpreter's lock from the server they measure.
        browser = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        levels: dict[str, Callable[[int], dict[str, float]]] = {
            **{side: (lambda c, p=params: browser.submit(page_level, server.port, p, c)
                      .result()) for side, params in pages.items()},
            **{side: (lambda c, k=calls: run_level(k, c)) for side, calls in bare.items()},
        }
        for side in ("page text", "bare text", "page vector", "bare vector"):
            levels[side](1)  # warm: the text tower, connections, the engine's caches
        for clients in CLIENTS:
            for side in ("page text", "bare text", "page vector", "bare vector"):
                figures = levels[side](clients)
                rows.append({"points": points, "clients": clients, "side": side, **figures})
                print(f"  {points:>7} pts {clients:>2} clients {side:<12} "
                      f"p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms  "
                      f"{figures['qps']:7.1f} q/s", flush=True)
        browser.shutdown()
    return rows


def page_level(port: int, params: list[dict[str, Any]], clients: int) -> dict[str, float]:
    """In the client process: every request once over ``clients`` connections."""
    page = page_call(port)
    return run_level([page(p) for p in params], clients)


def summary(rows: list[dict[str, Any]]) -> list[str]:
    def get(points: int, clients: int, side: str) -> dict[str, Any]:
        return next(r for r in rows if (r["points"], r["clients"], r["side"]) ==
                    (points, clients, side))

    lines = []
    for points in sorted({r["points"] for r in rows}):
        for clients in CLIENTS:
            for kind in ("text", "vector"):
                page, bare = get(points, clients, f"page {kind}"), get(points, clients,
                                                                        f"bare {kind}")
                lines.append(f"{points:>7} pts {clients:>2} clients {kind:<6}: page/bare p50 "
                             f"{page['p50_ms'] / bare['p50_ms']:.2f}x, q/s "
                             f"{page['qps'] / bare['qps']:.2f}x")
    biggest = max(r["points"] for r in rows)
    text, vec = get(biggest, 1, "page text"), get(biggest, 1, "page vector")
    ratio = vec["p50_ms"] / get(biggest, 1, "bare vector")["p50_ms"]
    lines.append(f"goals at {biggest} points, 1 client: page text p50 {text['p50_ms']:.1f} ms "
                 f"(<= 20: {'met' if text['p50_ms'] <= 20 else 'NOT met'}), p99 "
                 f"{text['p99_ms']:.1f} ms (<= 60: {'met' if text['p99_ms'] <= 60 else 'NOT met'})"
                 f"; page vector {ratio:.2f}x bare (<= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200, help="calls per side and level")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for points in args.sizes:
        with tempfile.TemporaryDirectory(prefix="mediabind-bench-ui-") as tmp:
            print(f"{points} points", flush=True)
            rows += measure(build(Path(tmp), points), points, args.queries)
    print("\n".join(summary(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
