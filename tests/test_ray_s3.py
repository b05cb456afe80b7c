"""A source on object storage that only the worker nodes may read.

A local S3 endpoint (moto's server, its own process on 127.0.0.1) holds the
source. The two worker nodes of a real Ray cluster (``ray.cluster_utils``)
get its address and credentials in their environment; the head, where this
test's driver runs, gets neither, and its S3 endpoint points at a closed port.
So any listing or read by the driver fails the run: the listing runs in a task,
and the members are read by the read tasks. The driver's own read() byte
counter shows it read nothing of the source either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import open_ready_store, settings_for

from embed_workers.pipeline import run_ingest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BUCKET = "archive"
KEYS = {"AWS_ACCESS_KEY_ID": "worker-key", "AWS_SECRET_ACCESS_KEY": "worker-secret",
        "AWS_DEFAULT_REGION": "us-east-1"}


def rchar() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar"))
    return int(line.split()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server in a process of its own."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def cluster(endpoint):
    """A head with no CPU and no credentials (the driver's node), and two worker nodes
    that hold the endpoint and the keys."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    worker_env = KEYS | {"FSSPEC_S3_ENDPOINT_URL": endpoint}
    workers = [made.add_node(num_cpus=2, env_vars=worker_env) for _ in range(2)]
    ray.init(address=made.address, log_to_driver=False)
    made.wait_for_nodes()
    yield {w.node_id for w in workers}
    ray.shutdown()
    made.shutdown()


@pytest.fixture
def driver_without_access(monkeypatch, tmp_path):
    """This process (the driver) has no keys, and its S3 endpoint refuses connections."""
    import fsspec.config

    for name in (*KEYS, "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://127.0.0.1:{free_port()}"})


def upload_source(endpoint: str, prefix: str) -> int:
    """Notes, photos and blobs of an unknown kind under ``s3://archive/<prefix>/``."""
    from io import BytesIO

    from PIL import Image

    fs = s3fs.S3FileSystem(key=KEYS["AWS_ACCESS_KEY_ID"], secret=KEYS["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=endpoint, skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    rng = np.random.default_rng(13)
    files: dict[str, bytes] = {}
    for i in range(10):
        files[f"notes/note{i}.txt"] = f"note {i}: a kingfisher on the weir\n".encode()
    for i in range(4):
        out = BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(out, "PNG")
        files[f"photos/p{i}.png"] = out.getvalue()
    for i in range(6):
        files[f"blobs/b{i}.bin"] = rng.bytes(1 << 20)
    for name, data in files.items():
        fs.pipe(f"{BUCKET}/{prefix}/{name}", data)
    return sum(len(d) for d in files.values())


def test_only_the_workers_list_and_read_an_s3_source(endpoint, cluster, driver_without_access,
                                                     tmp_path):
    workers = cluster
    size = upload_source(endpoint, "run1")
    source = f"s3://{BUCKET}/run1"
    settings = settings_for(tmp_path / "home", shard_files=3, decode_workers=2)
    warm = settings.model_copy(update={"home": tmp_path / "warm"})
    with open_ready_store(warm) as store:  # the driver's imports and first store writes
        run_ingest(f"{source}/notes", store, settings=warm, executor="ray")
    with open_ready_store(settings) as store:
        before = rchar()
        report = run_ingest(source, store, settings=settings, executor="ray",
                            ledger=store.ledger())
        driver_read = rchar() - before
        again = run_ingest(source, store, settings=settings, executor="ray",
                           ledger=store.ledger())
        stored = store.count()
    print(f"\ndriver read {driver_read} bytes through read() while workers read "
          f"{report.source_bytes_read} of the {size}-byte source")
    assert report.error is None and report.items_completed == 14, report.summary()
    assert sorted(r.uri.rsplit("/", 1)[-1] for r in report.rejected) == [  # any order:
        f"b{i}.bin" for i in range(6)]  # two workers read them
    assert report.objects_listed == 20 and report.source_bytes_read == size
    assert set(report.decode_nodes) <= workers and set(report.encode_nodes) <= workers
    assert stored == 14  # one point per note and photo (one segment each)
    assert driver_read < 64 * 1024  # RPC replies and its own files: none of the source
    assert again.items_unchanged == 20 and again.source_bytes_read == 0  # listed in a task


def test_a_missing_prefix_is_the_users_error_from_the_listing_task(endpoint, cluster,
                                                                   driver_without_access,
                                                                   tmp_path):
    settings = settings_for(tmp_path / "home")
    with open_ready_store(settings) as store, pytest.raises(
            FileNotFoundError, match="^source not found: s3://archive/nothing-here$"):
        run_ingest(f"s3://{BUCKET}/nothing-here", store, settings=settings, executor="ray",
                   ledger=store.ledger())
