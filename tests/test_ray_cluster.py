"""The Ray executor on a real multi-node cluster on this machine: a head and two workers.

``ray.cluster_utils.Cluster`` starts real raylets, one per node, each with its
own resources. The head (where this test's driver runs) has no CPU, so every
read task and encode actor must run on a worker node; the rows they send back
name their node. The driver lists the source and must read none of its content:
its own read() byte counter (rchar) stays far below the source's size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import completing, open_ready_store, settings_for

from embed_workers.pipeline import run_ingest
from flows.run import start_run
from search.store import open_store

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BLOB_BYTES = 1 << 20


def rchar() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU (the driver's node) and two worker nodes of two CPUs each."""
    if ray.is_initialized():
        ray.shutdown()  # another module's local Ray; this module needs its own cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    workers = [made.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=made.address, log_to_driver=False)
    made.wait_for_nodes()
    yield made, {w.node_id for w in workers}
    ray.shutdown()
    made.shutdown()


def source_folder(root: Path) -> Path:
    """Notes and photos to embed, and blobs of an unknown kind: read by a worker, refused."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(12):
        (root / f"note{i:02d}.txt").write_text(f"note {i}: a heron over the river\n")
    for i in range(16):
        (root / f"blob{i:02d}.bin").write_bytes(rng.bytes(BLOB_BYTES))
    from PIL import Image

    for i in range(4):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo{i}.png")
    return root


def warm_up(tmp_path: Path, settings) -> None:
    folder = tmp_path / "warm"
    folder.mkdir()
    (folder / "a.txt").write_text("warming up\n")
    warm = settings.model_copy(update={"home": tmp_path / "warm_home"})
    with open_ready_store(warm) as store:
        run_ingest(str(folder), store, settings=warm, executor="ray", ledger=store.ledger())


def test_shards_are_read_decoded_and_encoded_on_worker_nodes_only(cluster, tmp_path):
    made, worker_ids = cluster
    folder = source_folder(tmp_path / "src")
    total = sum(p.stat().st_size for p in folder.iterdir())
    settings = settings_for(tmp_path / "home", shard_files=4, decode_workers=2,
                            encode_actors=2)
    warm_up(tmp_path, settings)  # the driver's own imports and first Ray Data plan read files
    with open_ready_store(settings) as store:
        before = rchar()
        report = run_ingest(str(folder), store, settings=settings, executor="ray",
                            ledger=store.ledger())
        driver_read = rchar() - before
        points = store.scroll(None, limit=10_000)
    print(f"\ndecode nodes {report.decode_nodes}, encode nodes {report.encode_nodes}; "
          f"the driver read {driver_read} bytes through read() of a {total}-byte source")
    assert report.shards == 8 and report.items_completed == 16
    assert len(report.rejected_items()) == 16  # the blobs
    # Both workers and the head none: the decode actors (spread, one per worker) start
    # reading together (``StartGate``), so neither takes all eight small shards alone.
    assert set(report.decode_nodes) == worker_ids
    assert sum(report.decode_nodes.values()) == 32
    assert set(report.encode_nodes) <= worker_ids and report.encode_nodes
    assert report.source_bytes_read >= 16 * BLOB_BYTES  # the workers read them
    assert driver_read < total // 20
    # 12 one-line notes and 4 photos: one segment each, so one point each, once
    assert len(points) == 16 and len(completing(p.payload for p in points)) == 16


def test_the_same_bytes_in_two_shards_are_one_item_with_both_paths(cluster, tmp_path):
    """Two read tasks may find the same bytes at once: the driver admits one copy."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (folder / name).write_text("the same note, at four paths\n")
    (folder / "e.txt").write_text("a note of its own\n")
    settings = settings_for(tmp_path / "home", shard_files=1, decode_workers=2)
    with open_ready_store(settings) as store:
        report = run_ingest(str(folder), store, settings=settings, executor="ray",
                            ledger=store.ledger())
        rows = store.list_items()
        again = run_ingest(str(folder), store, settings=settings, executor="ray",
                           ledger=store.ledger())
    assert report.items_completed == 2 and report.items_duplicate == 3
    [shared] = [r for r in rows if len(r["source_uri"]) > 1]
    assert sorted(shared["source_uri"]) == [str(folder / n) for n in
                                            ("a.txt", "b.txt", "c.txt", "d.txt")]
    assert shared["n_points"] == 1 and sum(r["n_points"] for r in rows) == 2  # one point each
    assert again.items_unchanged == 5 and again.source_bytes_read == 0


def test_one_large_tar_is_split_by_its_member_index_across_the_workers(cluster, tmp_path):
    """A source that is one 1,000-member .tar: a worker indexes it (headers only), the
    plan cuts the index into parts, and decode actors on the workers read their parts'
    members by range; the archive is settled as one object once every part is done."""
    import io
    import tarfile

    made, worker_ids = cluster
    archive = tmp_path / "notes.tar"
    payload = 0
    with tarfile.open(archive, "w") as tar:
        for i in range(1000):
            data = f"note {i}: {i % 37} terns over the sandbar at {i % 24} h\n".encode()
            info = tarfile.TarInfo(f"notes/{i:04d}.txt")
            info.size, payload = len(data), payload + len(data)
            tar.addfile(info, io.BytesIO(data))
    settings = settings_for(tmp_path / "home", shard_files=125, decode_workers=2,
                            encode_actors=2, upsert_batch=512)
    warm_up(tmp_path, settings)
    with open_ready_store(settings) as store:
        before = rchar()
        report = run_ingest(str(archive), store, settings=settings, executor="ray",
                            ledger=store.ledger())
        driver_read = rchar() - before
        again = run_ingest(str(archive), store, settings=settings, executor="ray",
                           ledger=store.ledger())
        audit = store.ledger().audit()
    size = archive.stat().st_size
    print(f"\n1,000-member tar in {report.shards} parts; entries read per node "
          f"{report.decode_nodes}; the driver read {driver_read} bytes of a {size}-byte tar")
    assert report.shards == 8 and report.items_completed == 1000 and not report.rejected
    # The parts are read on both workers (the decode actors start reading together,
    # ``StartGate``), and none on the head.
    assert set(report.decode_nodes) == worker_ids
    assert report.source_bytes_read == payload  # members by range: headers not counted
    assert driver_read < size // 20
    assert audit.agrees and audit.items == 1000, audit.describe()
    assert again.items_unchanged == 1 and again.source_bytes_read == 0 and again.shards == 0


@pytest.fixture
def doomed_cluster():
    """A head with no CPU and two worker nodes, one of which a test will kill."""
    if ray.is_initialized():
        ray.shutdown()
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    workers = [made.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=made.address, log_to_driver=False)
    made.wait_for_nodes()
    yield made, workers
    ray.shutdown()
    made.shutdown()


def big_folder(root: Path, notes: int, photos: int) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(notes):
        (root / f"note{i:03d}.txt").write_text(f"note {i}: the tide at dawn, {i * 7} gulls\n")
    for i in range(photos):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            root / f"photo{i:03d}.png")
    return root


def reading_on(node, within_s: float) -> bool:
    """Wait until a decode actor reads among the node's worker processes (Ray names a
    worker's process after the call it runs)."""
    import time

    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for proc in raylet.children(recursive=True):
            try:
                if "DecodeActor)).submit" in " ".join(proc.cmdline()):
                    return True
            except psutil.Error:
                continue
        time.sleep(0.05)
    return False


def test_a_killed_worker_node_leaves_every_point_once_and_a_smaller_cluster_works(
        doomed_cluster, tmp_path):
    import threading

    made, workers = doomed_cluster
    folder = big_folder(tmp_path / "src", notes=60, photos=60)
    settings = settings_for(tmp_path / "home", shard_files=4, decode_workers=2,
                            encode_actors=2, upsert_batch=8)
    seen = {"items": 0}

    def progress(p) -> None:
        seen["items"] = p.items_done

    outcome: dict = {}
    with open_ready_store(settings) as store:
        def ingest() -> None:
            try:
                outcome["report"] = run_ingest(str(folder), store, settings=settings,
                                               executor="ray", ledger=store.ledger(),
                                               progress=progress)
            except Exception as exc:  # the test says what is acceptable
                outcome["error"] = f"{type(exc).__name__}: {exc}"
        run = threading.Thread(target=ingest, daemon=True)
        run.start()
        assert reading_on(workers[0], within_s=300), "no read task ever ran on the node"
        killed_at = seen["items"]
        made.remove_node(workers[0], allow_graceful=False)  # its raylet and workers die
        run.join(400)
        assert not run.is_alive(), "the run did not end after the node died"
        points = store.scroll(None, limit=10_000)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    print(f"\nkilled a worker node at {killed_at} of 120 items; then {report.items_completed} "
          f"items completed, rejected {[r.reason for r in report.rejected][:3]}")
    assert killed_at < 120  # the node died mid-run
    assert report.items_completed == 120 and report.rejected == []
    keys = [(p.payload["item_id"], p.payload["modality"], p.payload["segment_index"])
            for p in points]
    assert len(keys) == len(set(keys)) == 120  # one point per note or photo, counted once
    with open_store(settings) as store:
        audit = store.ledger().audit()
    assert audit.agrees and audit.items == 120, audit.describe()

    fresh = settings.model_copy(update={"home": tmp_path / "again"})
    with open_ready_store(fresh) as store:  # one worker node left: the pools fit it
        again = run_ingest(str(folder), store, settings=fresh, executor="ray",
                           ledger=store.ledger())
        assert again.items_completed == 120 and store.count() == 120




def test_a_run_started_while_ray_still_counts_a_dead_node_completes(doomed_cluster, tmp_path):
    """Ray marks a killed node dead some seconds later; a run planned in between sizes its
    pool for two nodes while one is left. It must not wait forever (all actors on the
    node that is left, no room for a read), and it must complete there."""
    made, workers = doomed_cluster
    folder = big_folder(tmp_path / "src", notes=12, photos=12)
    settings = settings_for(tmp_path / "home", shard_files=4, decode_workers=2,
                            encode_actors=2)
    made.remove_node(workers[0], allow_graceful=False)
    alive = sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)
    assert alive == 2, "Ray already saw the node die: this test needs the moment before"
    with open_ready_store(settings) as store:
        report = run_ingest(str(folder), store, settings=settings, executor="ray",
                            ledger=store.ledger())
        assert report.items_completed == 24 and report.rejected == []
        assert store.count() == 24
    print(f"\nRay counted {alive} live worker node(s) when the run started; it ran on "
          f"{sorted(report.encode_nodes)}")
    assert set(report.encode_nodes) == {workers[1].node_id}


class StagedEvents:
    """Counts the rows staged so far, per event, reading each new part once."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen, self.events = folder, set(), []

    def count(self, event: str) -> int:
        import pyarrow.parquet as pq

        for part in sorted(self.folder.rglob("*.parquet")):
            if part not in self.seen:
                try:
                    self.events += pq.read_table(part, columns=["event"]).column(0).to_pylist()
                except FileNotFoundError:  # the run ended and removed its parts
                    continue
                self.seen.add(part)
        return self.events.count(event)


def same_size_photos(root: Path, count: int) -> Path:
    """Photos of one size each (BMP, uncompressed), so the bytes a run reads say how many
    it read; images are encoded in small batches, so the run stages many parts."""
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
            root / f"photo{i:03d}.bmp")
    return root


def test_a_killed_driver_leaves_staged_work_the_rerun_commits_without_encoding(
        cluster, tmp_path):
    """SIGKILL the driver (the CLI, joined to the cluster) once encoded output is staged:
    the rerun commits what was staged, reads and encodes only the rest, and ends with
    the ledger and the store in agreement."""
    import signal
    import subprocess
    import sys
    import time

    made, _ = cluster
    count = 480
    folder = same_size_photos(tmp_path / "src", count)
    size = (folder / "photo000.bmp").stat().st_size
    # The driver holds every point until its run ends, so nothing it was sent is
    # committed before it dies: what the rerun finds staged was encoded once only.
    settings = settings_for(tmp_path / "home", shard_files=2, decode_workers=2,
                            encode_actors=2, upsert_batch=100_000)
    staged = tmp_path / "home" / "staging"
    env = os.environ | {"RAY_ADDRESS": made.address, "MEDIABIND_HOME": str(settings.home),
                        "MEDIABIND_PRESET": settings.preset, "MEDIABIND_DEVICE": "cpu",
                        "MEDIABIND_DTYPE": "float32", "MEDIABIND_STORE": "edge",
                        "MEDIABIND_SHARD_FILES": "2", "MEDIABIND_DECODE_WORKERS": "2",
                        "MEDIABIND_ENCODE_ACTORS": "2", "MEDIABIND_UPSERT_BATCH": "100000"}
    driver = subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", str(folder),
                               "--executor", "ray"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    events = StagedEvents(staged)
    while not (events.count("segment") >= 32 and events.count("shard") >= 8):
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the driver staged too little in 300 s"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait(60)
    left = len(list(staged.rglob("*.parquet")))

    rerun = start_run(str(folder), settings, executor="ray").report
    read = rerun.items_completed - rerun.items_from_staging
    print(f"\ndriver killed with {left} parts staged; the rerun committed "
          f"{rerun.items_from_staging} items from them, found {rerun.items_unchanged} in the "
          f"ledger and {rerun.items_skipped} stored, read {read}")
    assert rerun.rejected == [] and rerun.items_from_staging >= 1
    assert rerun.items_from_staging + rerun.items_unchanged + rerun.items_skipped + read == count
    assert rerun.source_bytes_read == read * size  # only what was not staged or stored
    assert sum(rerun.encode_nodes.values()) == read  # one segment per photo: staged ones not
    assert not list(staged.rglob("*.parquet"))  # all committed, so removed
    with open_store(settings) as store:
        audit = store.ledger().audit()
        assert audit.agrees and audit.items == count, audit.describe()
        assert store.count() == count  # one point per photo
