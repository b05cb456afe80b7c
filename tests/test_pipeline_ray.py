"""End to end with the Ray executor, and its congruence with the local one.

One Ray instance for the whole test session (start-up costs seconds). It has
more CPUs than the decode tasks plus the actor ask for, so the pool can never
starve the read tasks (see shared/ENVIRONMENT.md, the 2-core deadlock).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pipeline_helpers
import pytest
from pipeline_helpers import (
    CORRUPT,
    GOOD_FILES,
    FailingSink,
    all_points,
    expected_segments,
    make_archive,
    open_ready_store,
    settings_for,
    vectors,
)

from embed_workers.pipeline import run_ingest
from schemas import FILE_LEVEL_INDEX

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def ray_session():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    # The helpers' FailingSink is opened in the committer actor: ship its module by value.
    ray.cloudpickle.register_pickle_by_value(pipeline_helpers)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archive")
    return make_archive(tmp), tmp / "media"


def _segments(points: dict) -> Counter[str]:
    return Counter(p["modality"] for p in points.values() if p["segment_index"] != FILE_LEVEL_INDEX)


def test_ray_matches_local_and_reruns_skip(ray_session, archive, tmp_path) -> None:
    path, folder = archive
    on_ray, on_local = settings_for(tmp_path / "ray"), settings_for(tmp_path / "local")
    lock = on_ray.home / "qdrant" / "edge" / ".mediabind.lock"
    holders: list[str] = []  # who holds the embedded store while the run goes on
    with open_ready_store(on_ray) as ray_store, open_ready_store(on_local) as local_store:
        report = run_ingest(str(path), ray_store, settings=on_ray, executor="ray",
                            progress=lambda _: holders.append(lock.read_text()))
        # The committer actor held the store, not this process (the driver).
        assert holders and not any(h.startswith(f"pid {os.getpid()} ") for h in holders)
        local = run_ingest(str(path), local_store, settings=on_local, executor="local")
        ray_points, local_points = all_points(ray_store), all_points(local_store)
        # Decode actors take one file at a time, so their sound is decoded in process;
        # the local run's decode threads send it to ffmpeg processes. Same points below.
        with_sound = sum(local.audio_decoders.values())
        assert with_sound and local.audio_decoders == {"ffmpeg": with_sound}
        assert report.audio_decoders == {"pyav": with_sound}

        assert _segments(ray_points) == expected_segments(folder, on_ray) == report.segments_written
        assert report.items_completed == len(GOOD_FILES) and report.executor == "ray"
        assert [r.uri.endswith(CORRUPT) for r in report.rejected] == [True]
        # Same point ids, same payload skeleton, (near-)identical vectors.
        assert set(ray_points) == set(local_points)
        for pid, payload in ray_points.items():
            other = local_points[pid]
            assert {k: payload[k] for k in ("item_id", "modality", "segment_index", "start_s")} \
                == {k: other[k] for k in ("item_id", "modality", "segment_index", "start_s")}
        ids = sorted(ray_points)
        a, b = vectors(ray_store, ids), vectors(local_store, ids)
        assert max(float(np.abs(a[i] - b[i]).max()) for i in ids) < 1e-4

        again = run_ingest(str(path), ray_store, settings=on_ray, executor="ray")
        assert again.points_written == 0 and again.items_skipped == len(GOOD_FILES)
        assert ray_store.count() == len(ray_points)


def test_ray_run_cut_off_midway_resumes(ray_session, archive, tmp_path) -> None:
    path, folder = archive
    settings = settings_for(tmp_path / "home", upsert_batch=4)
    with open_ready_store(settings) as store:
        with pytest.raises(ConnectionError):
            run_ingest(str(path), FailingSink(store, allowed=2), settings=settings,
                       executor="ray")
        assert store.count() > 0
        resumed = run_ingest(str(path), store, settings=settings, executor="ray")
        points = all_points(store)
        assert _segments(points) == expected_segments(folder, settings)
        assert resumed.items_skipped + resumed.items_completed == len(GOOD_FILES)
        assert ray.is_initialized()  # the caller's Ray is left running


def test_a_device_that_keeps_failing_stops_a_ray_run_instead_of_being_retried(
        ray_session, archive, tmp_path) -> None:
    """The GPU cannot fail here: its error is raised where the model would raise it, in
    the encoder the actors are shipped. Ray must not retry it forever."""
    from embed_workers.encoder import Encoder
    from embed_workers.pipeline import EncoderFault

    path, _ = archive
    settings = settings_for(tmp_path / "home")
    encoder = Encoder(settings=settings)

    def broken_device(inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    encoder.encode_prepared = broken_device
    with open_ready_store(settings) as store, pytest.raises(EncoderFault, match="device failed"):
        run_ingest(str(path), store, settings=settings, executor="ray", encoder=encoder)
    assert ray.is_initialized()  # the caller's Ray is left running


def test_the_start_gate_holds_decode_actors_until_the_pool_is_up(ray_session) -> None:
    """Each decode actor waits at the gate until the whole pool has arrived; one that
    cannot start holds the others only for the bound, and a late (restarted) actor
    passes at once."""
    from embed_workers.executors.ray_tasks import start_gate

    gate = start_gate(3)
    first = [gate.arrive.remote(120.0) for _ in range(2)]
    waiting, held = ray.wait(first, num_returns=2, timeout=1.0)
    assert not waiting and len(held) == 2  # two of three: both held
    third = gate.arrive.remote(120.0)
    assert sorted(ray.get([*first, third], timeout=60)) == [3, 3, 3]
    assert ray.get(gate.arrive.remote(120.0), timeout=60) == 4  # restarted: at once

    lonely = start_gate(2)  # the second actor never starts
    assert ray.get(lonely.arrive.remote(0.5), timeout=60) == 1
    assert ray.get(lonely.arrive.remote(120.0), timeout=60) == 2  # the gate stayed open
