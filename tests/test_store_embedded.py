"""What only the embedded stores have (one process per folder, edge's HNSW build), plus
retries, backend choice and the server's handling of its API key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from store_helpers import EMBEDDED_PARAMS, POLICY, random_unit, record, settings_for

from schemas import Settings
from search.backends.lock import StoreLockedError
from search.store import VectorStore, open_store

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from schemas import Settings
    from search.store import open_store
    store = open_store(Settings(home=Path(sys.argv[1]), store=sys.argv[2]))
    print("ready", flush=True)
    sys.stdin.readline()  # hold the store until the test lets go
    store.close()
""")


@pytest.mark.parametrize("backend", EMBEDDED_PARAMS)
def test_second_process_gets_a_clear_error(backend: str, tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), backend],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as caught:
            open_store(settings_for(backend, tmp_path))
        message = str(caught.value)
        assert f"pid {holder.pid}" in message
        assert str(tmp_path / "qdrant" / backend) in message and "QDRANT_URL" in message
    finally:
        holder.communicate("done\n", timeout=30)
    open_store(settings_for(backend, tmp_path)).close()  # released when the holder exits


COMMITTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from search.backends.lock import DirLock
    lock = DirLock(Path(sys.argv[1]))
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))  # a committer on its way out after its driver died
""")


def _hold_as_committer(folder, driver: str, hold_s: float) -> subprocess.Popen:
    from schemas.sink import HOLDER_ENV

    env = {**os.environ, HOLDER_ENV: f"mediabind committer of driver pid {driver}"}
    holder = subprocess.Popen([sys.executable, "-c", COMMITTER, str(folder), str(hold_s)],
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    return holder


def _a_dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_committer_whose_driver_died_is_waited_for(tmp_path) -> None:
    from schemas.sink import pid_space
    from search.backends.lock import DirLock

    holder = _hold_as_committer(tmp_path, f"{_a_dead_pid()} on {pid_space()}", 2.0)
    try:
        DirLock(tmp_path).release()  # waited until the holder let go, then took the lock
        assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait()


def test_a_driver_in_another_pid_space_is_not_judged_dead_from_here(tmp_path) -> None:
    from schemas.sink import pid_space
    from search.backends.lock import DirLock

    # The same host name, another pid namespace: that pid says nothing about the driver.
    elsewhere = f"{pid_space().split('/')[0]}/4026530000"
    holder = _hold_as_committer(tmp_path, f"{_a_dead_pid()} on {elsewhere}", 60.0)
    try:
        with pytest.raises(StoreLockedError, match="committer of driver"):
            DirLock(tmp_path)
        assert holder.poll() is None  # refused at once, not after the holder left
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("backend", EMBEDDED_PARAMS)
def test_same_process_cannot_open_a_store_twice(backend: str, tmp_path) -> None:
    with open_store(settings_for(backend, tmp_path)), pytest.raises(StoreLockedError):
        open_store(settings_for(backend, tmp_path))


def _write(store: VectorStore, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    store.write([record(f"i{seed}-{k}", 0, random_unit(rng)) for k in range(n)])


def test_transient_errors_are_retried(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("search.store.RETRY_BASE_S", 0.0)
    with open_store(settings_for("edge", tmp_path, upsert_batch=2)) as store:
        store.ensure_collection("m1", POLICY)
        real_upsert, failures = store.backend.upsert, [ConnectionError("blip")] * 2

        def flaky_upsert(*args, **kwargs):
            if failures:
                raise failures.pop()
            return real_upsert(*args, **kwargs)

        monkeypatch.setattr(store.backend, "upsert", flaky_upsert)
        _write(store, 5)
        assert store.count() == 5 and not failures


def test_permanent_errors_are_not_retried(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_upsert(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("disk full")

    with open_store(settings_for("edge", tmp_path)) as store:
        store.ensure_collection("m1", POLICY)
        monkeypatch.setattr(store.backend, "upsert", broken_upsert)
        with pytest.raises(RuntimeError, match="disk full"):
            _write(store, 3)
    assert len(calls) == 1


def _indexed_after_reopen(tmp_path, runs: list[int], threshold: int) -> dict:
    """Write ``runs`` batches through one handle each (small incremental runs), then
    what the reopened collection's index covers."""
    settings = settings_for("edge", tmp_path, optimize_after_points=threshold)
    for seed, n in enumerate(runs):
        with open_store(settings) as store:
            store.ensure_collection("m1", POLICY)
            _write(store, n, seed=seed * 100_000)
    with open_store(settings) as store:
        return store.index_state()


def test_small_writes_leave_edge_on_exact_search(tmp_path) -> None:
    state = _indexed_after_reopen(tmp_path, [50], threshold=1000)
    assert (state["indexed"], state["points"], state["built_at"]) == (0, 50, None)


@pytest.mark.slow
def test_small_runs_that_add_up_get_the_hnsw_index(tmp_path) -> None:
    # 3 x 1000 x 1024-d float32 is above edge's indexing threshold (~10 MB per segment);
    # no one run wrote the threshold's worth of points, together they did.
    state = _indexed_after_reopen(tmp_path, [1000, 1000, 1000], threshold=3000)
    assert state["indexed"] == state["points"] == 3000 and state["built_at"]


def test_auto_backend_is_edge_without_a_server_url(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with open_store(Settings(home=tmp_path)) as store:
        assert store.backend.name == "edge"
    with pytest.raises(ValueError, match="unknown store backend 'mongo'"):
        open_store(Settings(home=tmp_path), backend="mongo")


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_server_never_shows_its_api_key(tmp_path, monkeypatch) -> None:
    secret = "sekrit-api-key-123"
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("QDRANT_API_KEY", secret)
    settings = Settings(home=tmp_path)
    assert settings.store_kind == "server" and secret not in repr(settings)
    with pytest.raises(ConnectionError) as caught:
        open_store(settings)
    assert "http://127.0.0.1:9" in str(caught.value)
    assert secret not in str(caught.value) and caught.value.__cause__ is None


def test_edge_adopts_a_collection_whose_catalog_entry_was_lost(tmp_path) -> None:
    settings = settings_for("edge", tmp_path)
    with open_store(settings) as store:
        store.ensure_collection("m1", POLICY)
        _write(store, 4)
    (tmp_path / "qdrant" / "edge" / "catalog.json").unlink()  # as if cut off mid-creation
    with open_store(settings) as store:
        with pytest.raises(LookupError, match="ingest something first"):
            store.count()
        store.ensure_collection("m1", POLICY)
        assert store.count() == 4


def test_an_items_file_level_points_go_in_one_upsert(tmp_path, monkeypatch) -> None:
    """They mark the item complete together: a crash between two upserts must not leave a
    video's audio file-level point without its vision one (the item would look complete)."""
    from store_helpers import POLICY, file_level, random_unit, record, settings_for

    from search.store import open_store

    rng = np.random.default_rng(3)
    with open_store(settings_for("edge", tmp_path, upsert_batch=2)) as store:
        store.ensure_collection("m1", POLICY)
        calls: list[list[str]] = []
        real = store.backend.upsert
        monkeypatch.setattr(store.backend, "upsert", lambda name, ids, v, p: (
            calls.append([q["modality"] + str(q["segment_index"]) for q in p]),
            real(name, ids, v, p))[1])
        store.write([record("v", 0, random_unit(rng), kind="video", modality="audio"),
                     file_level("v", random_unit(rng), kind="video", modality="audio"),
                     file_level("v", random_unit(rng), kind="video", modality="vision"),
                     record("w", 0, random_unit(rng)),
                     file_level("w", random_unit(rng))])
        # Batches of 2 would split v's file-level pair; the span grows by one instead.
        assert calls == [["audio0", "audio-1", "vision-1"], ["vision0", "vision-1"]]
        assert store.count() == 5


def _write_through(opener, item_id: str) -> None:
    """In another process: open the lent store and write one file-level point there."""
    from store_helpers import file_level, random_unit

    store = opener()
    store.write([file_level(item_id, random_unit(np.random.default_rng(1)))])
    store.close()


@pytest.mark.parametrize("backend", EMBEDDED_PARAMS)
def test_a_lent_store_is_written_by_the_borrower_and_seen_again_after(backend, tmp_path):
    """A Ray run's committer borrows the store: the lender lets go of the folder, the
    borrower writes to the same collection, and the lender sees it on the way out."""
    import multiprocessing

    settings = settings_for(backend, tmp_path)
    with open_store(settings) as store:
        store.ensure_collection("m1", POLICY)
        with store.lend() as opener:
            borrower = multiprocessing.get_context("spawn").Process(
                target=_write_through, args=(opener, "lent-item"))
            borrower.start()
            borrower.join(timeout=120)
            assert borrower.exitcode == 0
        assert store.completed_items(["lent-item"]) == {"lent-item"}
        assert store.ledger().count() == 0  # the ledger follows the reopened engine


@pytest.mark.parametrize("backend", EMBEDDED_PARAMS)
def test_one_store_serves_many_threads_reading_while_one_writes(backend: str, tmp_path) -> None:
    import threading

    with open_store(settings_for(backend, tmp_path)) as store:
        store.ensure_collection("m1", POLICY)
        _write(store, 50)
        probe = random_unit(np.random.default_rng(1))
        expected = [p.id for p in store.search(probe, limit=5)]
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(20):
                    found = store.search(probe, limit=5)
                    # The points written meanwhile (fixed seeds) are none of the nearest.
                    assert [p.id for p in found] == expected
                    assert store.count() >= 50
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        def write() -> None:
            try:
                rng = np.random.default_rng(2)
                for k in range(20):
                    store.write([record(f"w{k}", 0, random_unit(rng))])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)] + [threading.Thread(target=write)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert store.count() == 70  # every write landed once
